//! The `[namespaces.NAME]` tables of the file: per-namespace settings, each
//! key starting from `switchboard_gateway::Namespace::default()`, and the
//! name rule of `switchboard_gateway::policy::channel::validate_namespace`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Duration;

use switchboard_gateway::policy::channel::validate_namespace;
use switchboard_gateway::{Namespace, Namespaces};

use super::ConfigError;
use super::source::file_error;

/// The file's table of namespace tables.
pub const TABLE: &str = "namespaces";

/// The namespace the demo page's chat room uses.
const DEMO: &str = "demo";

/// One key of a namespace table: its name and how it sets its value.
struct Key {
    name: &'static str,
    set: fn(&toml::Value, &mut Namespace) -> Result<(), &'static str>,
}

/// Every key a namespace table may have.
const KEYS: &[Key] = &[
    Key {
        name: "history_size",
        set: |v, ns| {
            ns.history_size = match v.as_integer() {
                Some(n @ 0..=10_000) => n as usize,
                _ => return Err("must be a whole number in 0..=10000"),
            };
            Ok(())
        },
    },
    Key {
        name: "history_ttl",
        set: |v, ns| {
            ns.history_ttl = match v.as_integer() {
                Some(n @ 1..=2_592_000) => Duration::from_secs(n as u64),
                _ => return Err("must be whole seconds in 1..=2592000"),
            };
            Ok(())
        },
    },
    Key {
        name: "presence",
        set: |v, ns| {
            ns.presence = v.as_bool().ok_or(NOT_A_BOOL)?;
            Ok(())
        },
    },
    Key {
        name: "join_leave",
        set: |v, ns| {
            ns.join_leave = v.as_bool().ok_or(NOT_A_BOOL)?;
            Ok(())
        },
    },
    Key {
        name: "client_publish",
        set: |v, ns| {
            ns.client_publish = v.as_bool().ok_or(NOT_A_BOOL)?;
            Ok(())
        },
    },
];

const NOT_A_BOOL: &str = "must be true or false";

/// Reads the `[namespaces.NAME]` tables, reporting every bad name, key or value.
/// With the demo on, the `demo` namespace keeps history and presence unless
/// the file configures it.
pub fn read(file: &toml::Table, demo: bool, errors: &mut Vec<ConfigError>) -> Namespaces {
    let file = with_demo_namespace(file, demo);
    let Some(value) = file.get(TABLE) else {
        return Namespaces::default();
    };
    let mut fail = |setting: String, message: &str| errors.push(file_error(setting, message));
    let Some(tables) = value.as_table() else {
        fail(TABLE.into(), "must be a table of [namespaces.NAME] tables");
        return Namespaces::default();
    };
    let mut by_name = HashMap::new();
    for (name, table) in tables {
        let here = format!("{TABLE}.{name}");
        if let Err(message) = validate_namespace(name) {
            fail(here.clone(), &message);
        }
        let Some(table) = table.as_table() else {
            fail(here, "must be a table");
            continue;
        };
        let mut ns = Namespace::default();
        for (key, value) in table {
            let setting = format!("{here}.{key}");
            match KEYS.iter().find(|k| k.name == key) {
                Some(k) => {
                    if let Err(message) = (k.set)(value, &mut ns) {
                        fail(setting, message);
                    }
                }
                None => {
                    let known: Vec<&str> = KEYS.iter().map(|k| k.name).collect();
                    fail(
                        setting,
                        &format!("unknown key; known: {}", known.join(", ")),
                    );
                }
            }
        }
        by_name.insert(name.clone(), ns);
    }
    Namespaces::new(by_name)
}

/// With the demo on, the `demo` namespace its chat room uses keeps history and
/// presence, unless the file configures that namespace itself.
fn with_demo_namespace(file: &toml::Table, demo: bool) -> Cow<'_, toml::Table> {
    use toml::Value;
    let configured = match file.get(TABLE) {
        None => false,
        Some(Value::Table(t)) => t.contains_key(DEMO),
        Some(_) => true, // not a table: `read` reports it
    };
    if !demo || configured {
        return Cow::Borrowed(file);
    }
    let mut file = file.clone();
    let namespaces = file
        .entry(TABLE)
        .or_insert_with(|| Value::Table(toml::Table::new()));
    if let Value::Table(namespaces) = namespaces {
        let demo = toml::Table::from_iter([
            ("history_size".to_owned(), Value::Integer(100)),
            ("history_ttl".to_owned(), Value::Integer(3600)),
            ("presence".to_owned(), Value::Boolean(true)),
            ("join_leave".to_owned(), Value::Boolean(true)),
        ]);
        namespaces.insert(DEMO.to_owned(), Value::Table(demo));
    }
    Cow::Owned(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_text(text: &str, demo: bool) -> (Namespaces, Vec<ConfigError>) {
        let file: toml::Table = text.parse().expect("valid TOML");
        let mut errors = Vec::new();
        let namespaces = read(&file, demo, &mut errors);
        (namespaces, errors)
    }

    #[test]
    fn a_key_left_out_keeps_the_gateway_default() {
        let (ns, errors) = read_text("[namespaces.chat]\npresence = true\n", false);
        assert!(errors.is_empty(), "{errors:?}");
        let chat = ns.of("chat:x");
        assert_eq!(
            chat,
            &Namespace {
                presence: true,
                ..Namespace::default()
            }
        );
    }

    #[test]
    fn every_key_is_read() {
        let (ns, errors) = read_text(
            "[namespaces.chat]\nhistory_size = 10\nhistory_ttl = 60\npresence = true\njoin_leave = true\nclient_publish = false\n",
            false,
        );
        assert!(errors.is_empty(), "{errors:?}");
        let want = Namespace {
            history_size: 10,
            history_ttl: Duration::from_secs(60),
            presence: true,
            join_leave: true,
            client_publish: false,
        };
        assert_eq!(ns.of("chat:x"), &want);
    }

    #[test]
    fn a_bad_name_uses_the_gateways_rule_and_message() {
        let (_, errors) = read_text("[namespaces.\"a:b\"]\n[namespaces.\"a b\"]\n", false);
        let want = validate_namespace("a:b").unwrap_err();
        let mut settings: Vec<&str> = errors.iter().map(|e| e.setting.as_str()).collect();
        settings.sort_unstable();
        assert_eq!(settings, ["namespaces.a b", "namespaces.a:b"]);
        assert!(errors.iter().all(|e| e.message == want), "{errors:?}");
    }

    #[test]
    fn bad_keys_and_values_are_each_named() {
        let (_, errors) = read_text(
            "[namespaces.chat]\nhistory_size = -1\npresense = true\njoin_leave = 1\n",
            false,
        );
        let mut text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        text.sort_unstable();
        assert_eq!(
            text,
            [
                "namespaces.chat.history_size (config file): must be a whole number in 0..=10000",
                "namespaces.chat.join_leave (config file): must be true or false",
                "namespaces.chat.presense (config file): unknown key; known: history_size, history_ttl, presence, join_leave, client_publish",
            ]
        );
        let (_, errors) = read_text("namespaces = 1\n", false);
        assert_eq!(errors[0].setting, "namespaces");
    }

    /// The docs' example of a namespace table names every key with its
    /// default, and the default is the gateway's.
    #[test]
    fn the_docs_give_every_key_with_the_gateways_default() {
        let docs = include_str!("../../../../docs/CONFIGURATION.md");
        let section = docs
            .split("\n### Namespaces\n")
            .nth(1)
            .expect("docs/CONFIGURATION.md has a `### Namespaces` section");
        let section = section.split("\n### ").next().unwrap_or(section);
        let d = Namespace::default();
        for key in KEYS {
            let want = match key.name {
                "history_size" => d.history_size.to_string(),
                "history_ttl" => d.history_ttl.as_secs().to_string(),
                "presence" => d.presence.to_string(),
                "join_leave" => d.join_leave.to_string(),
                "client_publish" => d.client_publish.to_string(),
                other => panic!("a key this test does not know: {other}"),
            };
            let line = section
                .lines()
                .find(|l| l.starts_with(&format!("{} = ", key.name)))
                .unwrap_or_else(|| panic!("the docs' namespace example lacks {}", key.name));
            let documented = line
                .split("(default ")
                .nth(1)
                .and_then(|rest| rest.split([':', ')']).next())
                .unwrap_or_else(|| panic!("no `(default ...)` on the line of {}", key.name));
            assert_eq!(documented, want, "the docs' default of {}", key.name);
        }
        let documented_keys = section
            .lines()
            .filter(|l| l.contains(" = ") && l.contains("# "))
            .count();
        assert_eq!(
            documented_keys,
            KEYS.len(),
            "no key the reader does not know"
        );
    }
}
