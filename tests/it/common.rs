//! Test helpers: a temp dir with fixtures written from code, the binary run
//! against a sandbox, and queries on the audit database.

use convoy::sandbox::{Config, Sandbox};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
use std::path::{Path, PathBuf};
use std::process::Output;

pub struct Work {
    pub dir: tempfile::TempDir,
    pub db: PathBuf,
}

impl Work {
    pub fn new() -> Work {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("audit.db");
        Work { dir, db }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, content).expect("write fixture");
        p
    }

    /// The binary with a clean environment pointed at `sb` (when given).
    pub fn convoy(&self, sb: Option<&Sandbox>) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_convoy"));
        c.current_dir(self.dir.path()).env_clear();
        c.env("PATH", std::env::var("PATH").unwrap_or_default());
        c.env("CONVOY_DB", &self.db);
        if let Some(sb) = sb {
            c.env("ATTENTION_BASE_URL", sb.attention_url())
                .env("VG_BASE_URL", sb.vg_url())
                .env("ATTENTION_API_KEY", "sandbox-attention-key")
                .env("VG_API_TOKEN", "sandbox-vg-token");
        }
        c.kill_on_drop(true);
        c
    }

    /// Runs `convoy ARGS` against `sb` and returns its output.
    pub async fn run(&self, sb: Option<&Sandbox>, args: &[&str]) -> Out {
        let out = self
            .convoy(sb)
            .args(args)
            .output()
            .await
            .expect("run convoy");
        Out(out)
    }

    /// Runs `convoy ARGS` against `sb` with `input` on its stdin.
    pub async fn run_stdin(&self, sb: Option<&Sandbox>, args: &[&str], input: &[u8]) -> Out {
        let mut c = self.convoy(sb);
        c.args(args);
        feed(c, input).await
    }

    /// Creates the SQLite file `name` in the work dir and runs `sql` in it.
    pub async fn sqlite(&self, name: &str, sql: String) -> PathBuf {
        let path = self.path(name);
        let pool = SqlitePool::connect_with(
            SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true),
        )
        .await
        .expect("create SQLite file");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .expect("run SQL");
        pool.close().await;
        path
    }

    pub async fn db(&self) -> SqlitePool {
        SqlitePool::connect_with(SqliteConnectOptions::new().filename(&self.db))
            .await
            .expect("open audit db")
    }
}

/// Runs a prepared `convoy` command with `input` on its stdin.
pub async fn feed(mut c: tokio::process::Command, input: &[u8]) -> Out {
    use tokio::io::AsyncWriteExt;
    let mut child = c
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn convoy");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).await.unwrap();
    drop(stdin);
    Out(child.wait_with_output().await.expect("run convoy"))
}

pub struct Out(pub Output);

impl Out {
    pub fn code(&self) -> i32 {
        self.0.status.code().unwrap_or(-1)
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }
    /// Asserts the exit code, showing the output when it is wrong.
    pub fn expect(&self, code: i32) -> &Self {
        assert_eq!(
            self.code(),
            code,
            "exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout(),
            self.stderr()
        );
        self
    }
}

pub async fn sandbox(config: Config) -> Sandbox {
    Sandbox::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("start sandbox")
}

pub async fn plain_sandbox() -> Sandbox {
    sandbox(Config::default()).await
}

/// `(row_key, status, attempts, http_status)` of every audit row, in row order.
pub async fn audit_rows(db: &SqlitePool) -> Vec<(String, String, i64, Option<i64>)> {
    sqlx::query_as("SELECT row_key, status, attempts, http_status FROM audit ORDER BY row_number")
        .fetch_all(db)
        .await
        .expect("audit rows")
}

/// Every byte of the audit database's files (main, WAL, shared memory).
pub fn db_bytes(db: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let p = PathBuf::from(format!("{}{suffix}", db.display()));
        if let Ok(b) = std::fs::read(p) {
            all.extend(b);
        }
    }
    all
}

pub fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// A CSV of `attention` Attention rows (`a0`, `a1`, ...) then `vg` VG rows
/// (`v0`, ... of agent `agent`), under the header `op,conversation_id,agent_id,state`.
pub fn mixed_rows(attention: usize, vg: usize) -> Vec<String> {
    let mut rows: Vec<String> = (0..attention)
        .map(|i| format!("attention.archive,a{i},,"))
        .collect();
    rows.extend((0..vg).map(|i| format!("vg.update,v{i},agent,open")));
    rows
}

/// A CSV from a header and rows.
pub fn csv(header: &str, rows: &[String]) -> String {
    let mut s = String::from(header);
    s.push('\n');
    for r in rows {
        s.push_str(r);
        s.push('\n');
    }
    s
}

/// The work dir's audit database as an earlier convoy made it: the
/// migrations named before `before` (`"0007"`: up to 0006), applied as
/// that convoy applied them.
pub async fn database_before(w: &Work, before: &str) -> SqlitePool {
    let old = w.path(&format!("migrations-before-{before}"));
    std::fs::create_dir_all(&old).unwrap();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
    for f in std::fs::read_dir(dir).unwrap() {
        let f = f.unwrap();
        let name = f.file_name().into_string().unwrap();
        if name.as_str() < before {
            std::fs::copy(f.path(), old.join(name)).unwrap();
        }
    }
    let pool = SqlitePool::connect_with(
        SqliteConnectOptions::new()
            .filename(&w.db)
            .create_if_missing(true),
    )
    .await
    .unwrap();
    sqlx::migrate::Migrator::new(old.as_path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    pool
}
