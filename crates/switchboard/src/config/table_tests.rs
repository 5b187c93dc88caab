//! The settings table against what is derived from it: the command line,
//! `--help`, the file's keys, and the table of `docs/CONFIGURATION.md`.

use std::collections::HashSet;

use super::source::known_keys;
use super::table::{self, ALL, Fallback, Row};

/// The settings table of `docs/CONFIGURATION.md`.
const DOCS: &str = include_str!("../../../../docs/CONFIGURATION.md");

/// A row's name: its TOML key without a table (`jwt_secret`), or the flag's
/// for a row the file cannot hold (`config`).
fn name(row: &Row) -> String {
    match row.toml {
        Some(key) => key.rsplit('.').next().unwrap_or(key).to_owned(),
        None => row.id().replace('-', "_"),
    }
}

#[test]
fn flag_and_variable_follow_from_the_name() {
    for row in ALL {
        let name = name(row);
        assert_eq!(row.flag, format!("--{}", name.replace('_', "-")), "{row:?}");
        assert_eq!(
            row.env,
            format!("SWITCHBOARD_{}", name.to_ascii_uppercase()),
            "{row:?}"
        );
    }
}

#[test]
fn names_are_unique() {
    let flags: HashSet<&str> = ALL.iter().map(|r| r.flag).collect();
    let envs: HashSet<&str> = ALL.iter().map(|r| r.env).collect();
    let keys: HashSet<&str> = ALL.iter().filter_map(|r| r.toml).collect();
    assert_eq!(flags.len(), ALL.len());
    assert_eq!(envs.len(), ALL.len());
    assert_eq!(keys.len(), ALL.iter().filter(|r| r.toml.is_some()).count());
}

#[test]
fn every_row_is_a_flag_reading_its_variable() {
    let command = table::command();
    let args: Vec<_> = command
        .get_arguments()
        .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
        .collect();
    assert_eq!(args.len(), ALL.len(), "one argument per row, no other");
    for (arg, row) in args.iter().zip(ALL) {
        assert_eq!(
            arg.get_long().map(|l| format!("--{l}")).as_deref(),
            Some(row.flag)
        );
        assert_eq!(arg.get_env().and_then(|e| e.to_str()), Some(row.env));
    }
}

#[test]
fn help_shows_every_flag_variable_and_default() {
    // Wide enough that no line wraps inside a default.
    let help = table::command()
        .term_width(10_000)
        .render_long_help()
        .to_string();
    for row in ALL {
        assert!(
            help.contains(row.flag),
            "--help lacks {}:\n{help}",
            row.flag
        );
        assert!(help.contains(row.env), "--help lacks {}:\n{help}", row.env);
        if let Fallback::Value(v) = row.default {
            assert!(
                help.contains(&format!("[default: {v}]")),
                "--help lacks the default of {}:\n{help}",
                row.flag
            );
        }
    }
}

#[test]
fn the_file_knows_the_keys_of_the_rows_and_no_other() {
    let known = known_keys();
    let top: &Vec<&str> = &known.iter().find(|(t, _)| t.is_empty()).unwrap().1;
    assert!(top.contains(&"listen") && top.contains(&"fanout_lane_capacity"));
    assert!(!top.contains(&"jwt_secret"), "auth keys live in [auth]");
    let auth: &Vec<&str> = &known.iter().find(|(t, _)| *t == "auth").unwrap().1;
    assert_eq!(auth, &["jwt_secret", "jwt_public_key", "allow_anonymous"]);
    let count: usize = known.iter().map(|(_, keys)| keys.len()).sum();
    assert_eq!(
        count,
        ALL.len() - 4,
        "every row but --config and the Pusher app's three (its file form is [[pusher.apps]])"
    );
    let no_key: Vec<&str> = ALL
        .iter()
        .filter(|r| r.toml.is_none())
        .map(|r| r.flag)
        .collect();
    assert_eq!(
        no_key,
        [
            "--config",
            "--pusher-app-id",
            "--pusher-key",
            "--pusher-secret"
        ]
    );
}

/// The first four cells (flag, environment, TOML key, default) of each row
/// of the table under `## Every setting`.
fn docs_rows() -> Vec<[String; 4]> {
    let section = DOCS
        .split("\n## Every setting\n")
        .nth(1)
        .expect("docs/CONFIGURATION.md has a `## Every setting` section");
    let section = section.split("\n## ").next().unwrap_or(section);
    section
        .lines()
        .skip_while(|l| !l.starts_with("| flag |"))
        .skip(2) // the header and its `|---|` line
        .take_while(|l| l.starts_with('|'))
        .map(|line| {
            let cells: Vec<String> = line
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_owned())
                .collect();
            assert!(cells.len() >= 5, "a row of five cells: {line}");
            [0, 1, 2, 3].map(|i| cells[i].clone())
        })
        .collect()
}

/// A row as the docs' table writes its first four cells.
fn as_docs_row(row: &Row) -> [String; 4] {
    [
        format!("`{}`", row.flag),
        format!("`{}`", row.env),
        row.toml.map(|k| format!("`{k}`")).unwrap_or_default(),
        match row.default {
            Fallback::Value(v) => format!("`{v}`"),
            Fallback::Unset(text) | Fallback::Derived(text) => text.to_owned(),
        },
    ]
}

#[test]
fn the_docs_table_is_the_settings_table() {
    let docs = docs_rows();
    let want: Vec<[String; 4]> = ALL.iter().map(|r| as_docs_row(r)).collect();
    let show = |r: &[String; 4]| format!("| {} |", r.join(" | "));
    let missing: Vec<String> = want
        .iter()
        .filter(|r| !docs.contains(r))
        .map(show)
        .collect();
    let extra: Vec<String> = docs
        .iter()
        .filter(|r| !want.contains(r))
        .map(show)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "docs/CONFIGURATION.md, \"Every setting\" (flag, environment, TOML key, default):\n\
         rows the table has and the docs lack or write otherwise:\n{}\n\
         rows of the docs that are no row of the table:\n{}",
        missing.join("\n"),
        extra.join("\n")
    );
    assert_eq!(docs, want, "the docs list the rows in the table's order");
}
