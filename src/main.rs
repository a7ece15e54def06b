use clap::Parser;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = convoy::cli::Cli::parse();
    match convoy::cli::dispatch(cli).await {
        // A report that could not be written is a failed command.
        Ok(code) if convoy::output::failed() && code == ExitCode::SUCCESS => {
            ExitCode::from(convoy::cmd::exit::USAGE)
        }
        Ok(code) => code,
        Err(e) => {
            convoy::errln!("error: {e:#}");
            ExitCode::from(e.exit_code())
        }
    }
}
