//! Where a setting's text comes from: its flag, else its environment variable
//! (clap reads both), else its key in the TOML file, else its row's default.
//! Every bad value is recorded, named by its flag and its source.

use std::path::Path;

use clap::ArgMatches;
use clap::parser::ValueSource;

use super::ConfigError;
use super::table::{self, Fallback, Kind, Row, Setting};

/// Proof that a bad setting was recorded: only [`Reader::fail`] makes one, so
/// a configuration that could not be built always comes with its errors.
#[derive(Debug)]
pub struct Reported(());

/// Finds each setting's text in the first source that has it and parses it.
pub struct Reader<'a> {
    matches: &'a ArgMatches,
    /// The TOML file as read (empty without one).
    pub file: toml::Table,
    /// Every bad setting so far, in the order read.
    pub errors: Vec<ConfigError>,
    /// The flags of the rows read so far (each row must be read once).
    pub read: Vec<&'static str>,
}

impl<'a> Reader<'a> {
    /// A reader of `matches` (flags and environment) and of the TOML file
    /// they name, if any.
    pub fn new(matches: &'a ArgMatches) -> Reader<'a> {
        let mut r = Reader {
            matches,
            file: toml::Table::new(),
            errors: Vec::new(),
            read: Vec::new(),
        };
        if let Ok(Some(path)) = r.optional(&table::CONFIG) {
            r.file = read_toml(Path::new(&path), &mut r.errors);
        }
        r
    }

    /// A setting whose row has a default value. (Reading a row without one
    /// this way is a mistake in the code, reported like a bad setting so that
    /// every test that resolves a configuration fails on it.)
    pub fn value<T>(&mut self, setting: &Setting<T>) -> Result<T, Reported> {
        let row = &setting.row;
        let (text, source) = match self.lookup(row)? {
            Some(found) => found,
            None => match row.default {
                Fallback::Value(v) => (v.to_owned(), "default".to_owned()),
                Fallback::Unset(_) | Fallback::Derived(_) => {
                    return Err(self.fail(row, "default", "the table gives no default value"));
                }
            },
        };
        self.parse(setting, &text, &source)
    }

    /// A setting whose row has no default value: `None` when no source has it.
    /// (Reading a row with a default this way is a mistake, reported likewise.)
    pub fn optional<T>(&mut self, setting: &Setting<T>) -> Result<Option<T>, Reported> {
        let row = &setting.row;
        if let Fallback::Value(_) = row.default {
            return Err(self.fail(row, "default", "read without its default value"));
        }
        match self.lookup(row)? {
            None => Ok(None),
            Some((text, source)) => self.parse(setting, &text, &source).map(Some),
        }
    }

    /// Records a bad setting.
    pub fn fail(&mut self, row: &Row, source: &str, message: impl Into<String>) -> Reported {
        self.errors.push(ConfigError {
            setting: row.flag.to_owned(),
            source: source.to_owned(),
            message: message.into(),
        });
        Reported(())
    }

    fn parse<T>(&mut self, setting: &Setting<T>, text: &str, source: &str) -> Result<T, Reported> {
        (setting.parse)(text.trim()).map_err(|message| self.fail(&setting.row, source, message))
    }

    /// The text and source of the first of flag, environment and file that
    /// has the setting; `Ok(None)` when none has it.
    fn lookup(&mut self, row: &Row) -> Result<Option<(String, String)>, Reported> {
        self.read.push(row.flag);
        let given = self.matches.get_one::<String>(row.id());
        // Unset and empty are the same (an empty variable in a manifest means "not set").
        if let Some(text) = given.filter(|s| !s.trim().is_empty()) {
            let source = match self.matches.value_source(row.id()) {
                Some(ValueSource::EnvVariable) => format!("environment {}", row.env),
                _ => "command line".to_owned(),
            };
            return Ok(Some((text.clone(), source)));
        }
        let Some(value) = row.toml.and_then(|key| toml_value(&self.file, key)) else {
            return Ok(None);
        };
        let text = match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(items) if row.kind == Kind::List => {
                let strings: Option<Vec<&str>> = items.iter().map(toml::Value::as_str).collect();
                match strings {
                    Some(strings) => strings.join(","),
                    None => return Err(self.fail(row, "config file", "must be a list of strings")),
                }
            }
            other => {
                let message = format!("unexpected {} value", other.type_str());
                return Err(self.fail(row, "config file", message));
            }
        };
        Ok(Some((text, "config file".to_owned())))
    }

    /// Records every key of the file that no row reads (`[namespaces.*]` and
    /// `[pusher]` have readers of their own): unknown keys of a table such as
    /// `[auth]` first, then unknown top-level keys.
    pub fn check_known_keys(&mut self) {
        let known = known_keys();
        for (table, keys) in known.iter().filter(|(table, _)| !table.is_empty()) {
            match self.file.get(*table) {
                None => {}
                Some(toml::Value::Table(t)) => {
                    for key in t.keys().filter(|k| !keys.contains(&k.as_str())) {
                        self.errors
                            .push(file_error(format!("{table}.{key}"), "unknown key"));
                    }
                }
                Some(_) => self
                    .errors
                    .push(file_error((*table).to_owned(), "must be a table")),
            }
        }
        for key in self.file.keys() {
            let key = key.as_str();
            let is_table = known.iter().any(|(table, _)| *table == key);
            let is_top_level = known
                .iter()
                .any(|(table, keys)| table.is_empty() && keys.contains(&key));
            let has_reader = key == super::namespaces::TABLE || key == super::pusher::TABLE;
            if !(is_table || is_top_level || has_reader) {
                self.errors.push(file_error(key.to_owned(), "unknown key"));
            }
        }
    }
}

/// The value at a dotted TOML key (`auth.jwt_secret`), if the file has it.
fn toml_value<'t>(file: &'t toml::Table, key: &str) -> Option<&'t toml::Value> {
    match key.split_once('.') {
        Some((table, name)) => file.get(table)?.as_table()?.get(name),
        None => file.get(key),
    }
}

/// The TOML keys of the table's rows, grouped by the table that holds them
/// (`""` for the top level), in the order of the rows.
pub fn known_keys() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut known: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
    for key in table::ALL.iter().filter_map(|row| row.toml) {
        let (table, name) = key.split_once('.').unwrap_or(("", key));
        match known.iter_mut().find(|(t, _)| *t == table) {
            Some((_, names)) => names.push(name),
            None => known.push((table, vec![name])),
        }
    }
    known
}

/// An error about the file itself.
pub fn file_error(setting: String, message: &str) -> ConfigError {
    ConfigError {
        setting,
        source: "config file".into(),
        message: message.into(),
    }
}

fn read_toml(path: &Path, errors: &mut Vec<ConfigError>) -> toml::Table {
    let mut fail = |message: String| {
        errors.push(ConfigError {
            setting: table::CONFIG.row.flag.into(),
            source: path.display().to_string(),
            message,
        })
    };
    match std::fs::read_to_string(path) {
        Err(e) => {
            fail(format!("cannot read: {e}"));
            toml::Table::new()
        }
        Ok(text) => text.parse::<toml::Table>().unwrap_or_else(|e| {
            fail(format!("not valid TOML: {}", e.to_string().trim()));
            toml::Table::new()
        }),
    }
}
