//! Row validation, column by column and op by op.

use super::*;

fn cols(header: &str) -> Columns {
    Columns::from_header(header.split(',').map(str::to_owned).collect(), None).unwrap()
}

fn row(number: u64, cells: &[&str]) -> Row {
    Row {
        number,
        cells: cells
            .iter()
            .map(|c| (!c.is_empty()).then(|| (*c).to_owned()))
            .collect(),
        problem: None,
    }
}

#[test]
fn label_columns_merge_into_labels() {
    let c = cols("op,conversation_id,labels,label.priority");
    let (edit, _) = c
        .validate(&row(
            1,
            &["attention.set_labels", "c1", r#"{"stage":"won"}"#, "high"],
        ))
        .unwrap();
    let Edit::SetLabels { labels, .. } = edit else {
        panic!()
    };
    assert_eq!(labels["stage"], "won");
    assert_eq!(labels["priority"], "high");
}

#[test]
fn a_label_given_both_ways_names_the_column() {
    let c = cols("op,conversation_id,labels,label.stage");
    let e = c
        .validate(&row(
            4,
            &["attention.set_labels", "c1", r#"{"stage":"won"}"#, "lost"],
        ))
        .unwrap_err();
    assert_eq!(e.column.as_deref(), Some("label.stage"));
    assert!(e.to_string().starts_with("row 4, column label.stage"));
}

#[test]
fn misspelt_vg_field_gets_a_hint() {
    let c = cols("op,conversation_id,agent_id,conversation");
    let e = c
        .validate(&row(
            2,
            &["vg.update", "v1", "a1", r#"{"userEmial":"x@y.z"}"#],
        ))
        .unwrap_err();
    assert!(e.message.contains("did you mean userEmail?"), "{e}");
}

#[test]
fn vg_field_types_are_checked() {
    let c = cols("op,conversation_id,agent_id,conversation,tags");
    let e = c
        .validate(&row(
            3,
            &["vg.update", "v1", "a1", r#"{"isBlocked":"yes"}"#, ""],
        ))
        .unwrap_err();
    assert!(e.message.contains("isBlocked must be a boolean"), "{e}");
    let e = c
        .validate(&row(3, &["vg.update", "v1", "a1", "", "[1,2]"]))
        .unwrap_err();
    assert_eq!(e.column.as_deref(), Some("tags"));
}

#[test]
fn unknown_state_is_a_warning_not_an_error() {
    let c = cols("op,conversation_id,agent_id,state");
    let (_, warnings) = c
        .validate(&row(1, &["vg.update", "v1", "a1", "snoozed"]))
        .unwrap();
    assert_eq!(warnings.len(), 1);
}

#[test]
fn a_cell_the_op_does_not_use_is_an_error() {
    let c = cols("op,conversation_id,title");
    let e = c
        .validate(&row(1, &["attention.archive", "c1", "New"]))
        .unwrap_err();
    assert_eq!(e.column.as_deref(), Some("title"));
}

#[test]
fn dot_segments_and_blank_ids_are_refused() {
    let c = cols("op,conversation_id");
    for id in ["..", ".", "   ", " c1"] {
        assert!(
            c.validate(&row(1, &["attention.archive", id])).is_err(),
            "{id:?}"
        );
    }
}

#[test]
fn header_errors_are_source_errors() {
    assert!(Columns::from_header(vec!["op".into(), "title".into()], None).is_err());
    assert!(Columns::from_header(vec!["conversation_id".into()], None).is_err());
    assert!(Columns::from_header(vec!["conversation_id".into()], Some(Op::Archive)).is_ok());
    let c = Columns::from_header(
        vec!["op".into(), "conversation_id".into(), "titel".into()],
        None,
    )
    .unwrap();
    assert!(
        c.warnings[0].contains("did you mean title?"),
        "{:?}",
        c.warnings
    );
}

#[test]
fn row_hash_ignores_failure_columns_and_order() {
    let a = cols("op,conversation_id,status");
    let b = cols("conversation_id,op,error");
    assert_eq!(
        a.row_hash(&row(1, &["attention.archive", "c1", "failed"])),
        b.row_hash(&row(1, &["c1", "attention.archive", "boom"]))
    );
}
