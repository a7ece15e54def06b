//! Property tests of row validation and mapping: arbitrary rows never
//! panic, and every accepted row maps to a request whose path has exactly
//! the expected segments, its ids decoding back to themselves.

use convoy::call;
use convoy::edit::{Columns, Edit, Op, Row};
use proptest::prelude::*;

const HEADER: [&str; 12] = [
    "op",
    "conversation_id",
    "agent_id",
    "title",
    "labels",
    "label.k",
    "skip_analysis",
    "intelligence",
    "opportunity_id",
    "conversation",
    "state",
    "tags",
];

fn cell() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        any::<String>().prop_map(Some),
        "[a-z0-9/?#% .~-]{1,12}".prop_map(Some),
        prop_oneof![
            Just("{}"),
            Just(r#"{"a":"b"}"#),
            Just("[]"),
            Just(r#"[{"key":"k","value":"v"}]"#),
            Just(r#"{"state":"open","tags":["x"]}"#),
            Just(r#"["a","b"]"#),
            Just("true"),
            Just("no"),
            Just("open"),
            Just(".."),
            Just("."),
            Just("   "),
            Just("{"),
            Just("null"),
            Just("1e999"),
        ]
        .prop_map(|s| Some(s.to_owned())),
    ]
}

/// The columns an op reads (contract section 1); others stay mostly empty.
fn used(op: &str, col: &str) -> bool {
    matches!(col, "op" | "conversation_id")
        || match op {
            "attention.set_labels" => matches!(col, "labels" | "label.k" | "skip_analysis"),
            "attention.update" => matches!(col, "title" | "labels" | "label.k"),
            "attention.confirm_crm" => matches!(col, "intelligence" | "opportunity_id"),
            "vg.update" => matches!(
                col,
                "agent_id" | "title" | "conversation" | "state" | "tags"
            ),
            _ => false,
        }
}

/// A row: an op (usually a real one), cells for the columns it reads, and
/// now and then a stray cell in a column it does not.
fn row() -> impl Strategy<Value = Vec<Option<String>>> {
    let op = prop_oneof![
        9 => prop::sample::select(Op::ALL.to_vec()).prop_map(|o| o.name().to_owned()),
        1 => any::<String>(),
    ];
    (
        op,
        prop::collection::vec((cell(), prop::bool::weighted(0.03)), HEADER.len() - 1),
    )
        .prop_map(|(op, cells)| {
            let mut row = vec![Some(op.clone())];
            for ((c, stray), name) in cells.into_iter().zip(&HEADER[1..]) {
                row.push(if used(&op, name) || stray { c } else { None });
            }
            row
        })
}

#[test]
fn arbitrary_rows_never_panic_and_accepted_ones_keep_their_path() {
    use proptest::test_runner::{Config, TestRunner};
    let cols = Columns::from_header(HEADER.iter().map(|s| s.to_string()).collect(), None).unwrap();
    let accepted = std::cell::Cell::new(0u32);
    let mut runner = TestRunner::new(Config {
        cases: 3000,
        ..Config::default()
    });
    runner
        .run(&row(), |cells| {
            let row = Row {
                number: 7,
                cells,
                problem: None,
            };
            let _ = cols.row_hash(&row);
            let _ = cols.source_row(&row);
            let Ok((edit, _)) = cols.validate(&row) else {
                return Ok(());
            };
            accepted.set(accepted.get() + 1);
            check_path(&edit)
        })
        .unwrap();
    // Enough rows pass validation for the property to say something.
    assert!(
        accepted.get() >= 300,
        "only {} of 3000 rows were accepted",
        accepted.get()
    );
}

fn check_path(edit: &Edit) -> Result<(), proptest::test_runner::TestCaseError> {
    let base = match edit.op().api() {
        convoy::edit::Api::Attention => "https://api.attention.tech/v2",
        convoy::edit::Api::Vg => "https://eu-cloudflare.vg-stuff.com",
    };
    let c = call::build(edit, base);
    let url = reqwest::Url::parse(&c.url).unwrap();
    prop_assert!(
        url.query().is_none() && url.fragment().is_none(),
        "{}",
        c.url
    );
    let segs: Vec<String> = url
        .path_segments()
        .unwrap()
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .unwrap()
                .into_owned()
        })
        .collect();
    let id = edit.conversation_id().to_owned();
    let expected: Vec<String> = match edit {
        Edit::SetLabels { .. } => vec!["v2".into(), "conversations".into(), id, "labels".into()],
        Edit::Update { .. } | Edit::Archive { .. } => vec!["v2".into(), "conversations".into(), id],
        Edit::ConfirmCrm { .. } => vec![
            "v2".into(),
            "conversations".into(),
            id,
            "crm".into(),
            "confirm".into(),
        ],
        Edit::VgUpdate { agent_id, .. } => {
            vec!["agents".into(), agent_id.clone(), "convos".into(), id]
        }
    };
    prop_assert_eq!(segs, expected, "{}", c.url);
    if let Some(b) = &c.body {
        prop_assert!(serde_json::from_str::<serde_json::Value>(b).is_ok());
    }
    Ok(())
}
