//! The apps of the Pusher-compatible endpoint: one from `--pusher-app-id`,
//! `--pusher-key` and `--pusher-secret` (all three or none), and any number
//! from the file's `[[pusher.apps]]` tables. Together they are
//! `NodeConfig.pusher`; none leaves the endpoint off.
//!
//! An app's secret never appears in an error: messages name the setting and
//! say what is wrong, without repeating a secret or a webhook URL.

use switchboard_gateway::PusherApp;

use super::ConfigError;
use super::parse;
use super::source::{Reader, Reported, file_error};
use super::table::{PUSHER_APP_ID, PUSHER_KEY, PUSHER_SECRET, Row};

/// The file's table that holds the apps (`[[pusher.apps]]` is `pusher.apps`).
pub const TABLE: &str = "pusher";

/// The key of `[pusher]` that holds the array of app tables.
const APPS: &str = "apps";

/// The webhook events an app may ask for; an app with a `webhook_url` and no
/// `webhook_events` gets all of them.
pub const WEBHOOK_EVENTS: &[&str] = &[
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_event",
    "cache_miss",
];

/// Every key an app table may have.
const KEYS: &[&str] = &[
    "id",
    "key",
    "secret",
    "client_events",
    "webhook_url",
    "webhook_events",
    "max_connections",
    "client_event_rate",
    "max_presence_members",
];

/// The three rows of the app given by flags or environment, as read.
pub struct FlagApp {
    /// `--pusher-app-id`.
    pub id: Result<Option<String>, Reported>,
    /// `--pusher-key`.
    pub key: Result<Option<String>, Reported>,
    /// `--pusher-secret`.
    pub secret: Result<Option<String>, Reported>,
}

/// The apps: the flags' app first, then the file's in file order. Every bad
/// or missing value, and every id or key used twice, is recorded in `r`.
pub fn read(r: &mut Reader, flags: FlagApp) -> Vec<PusherApp> {
    let mut apps: Vec<Named> = Vec::new();
    if let Some(app) = from_flags(r, flags) {
        apps.push(Named {
            name: FLAGS.to_owned(),
            place: FLAGS.to_owned(),
            app,
        });
    }
    apps.extend(from_file(&r.file, &mut r.errors));
    check_unique(&apps, &mut r.errors);
    apps.into_iter().map(|named| named.app).collect()
}

/// An app and how errors name it.
struct Named {
    /// By id where it has a good one (`pusher.apps.app1`).
    name: String,
    /// By place, which two apps never share (`pusher.apps[2]`).
    place: String,
    app: PusherApp,
}

/// How errors name the app of the flags.
const FLAGS: &str = "the app of --pusher-app-id";

/// The app of the three rows: all three given makes an app, none makes
/// none, and some but not all is an error on each one missing.
fn from_flags(r: &mut Reader, flags: FlagApp) -> Option<PusherApp> {
    let rows: [(&Row, bool); 3] = [
        (&PUSHER_APP_ID.row, !matches!(flags.id, Ok(None))),
        (&PUSHER_KEY.row, !matches!(flags.key, Ok(None))),
        (&PUSHER_SECRET.row, !matches!(flags.secret, Ok(None))),
    ];
    let given: Vec<&str> = rows
        .iter()
        .filter(|(_, g)| *g)
        .map(|(row, _)| row.flag)
        .collect();
    if !given.is_empty() && given.len() < rows.len() {
        for (row, _) in rows.iter().filter(|(_, g)| !*g) {
            let message = format!(
                "needed because {} {} set: one Pusher app by flags or environment takes --pusher-app-id, --pusher-key and --pusher-secret together (or none of them)",
                given.join(" and "),
                if given.len() == 1 { "is" } else { "are" },
            );
            r.fail(row, "not set", message);
        }
        return None;
    }
    Some(PusherApp {
        id: flags.id.ok()??,
        key: flags.key.ok()??,
        secret: flags.secret.ok()??,
        client_events: true,
        webhook_url: None,
        webhook_events: Vec::new(),
        limits: Default::default(),
    })
}

/// The `[[pusher.apps]]` tables, each with the name its errors use.
fn from_file(file: &toml::Table, errors: &mut Vec<ConfigError>) -> Vec<Named> {
    let mut fail = |setting: String, message: &str| errors.push(file_error(setting, message));
    let Some(value) = file.get(TABLE) else {
        return Vec::new();
    };
    let Some(table) = value.as_table() else {
        fail(
            TABLE.into(),
            "must be a table: give apps as [[pusher.apps]] tables",
        );
        return Vec::new();
    };
    for key in table.keys().filter(|k| k.as_str() != APPS) {
        fail(format!("{TABLE}.{key}"), "unknown key; known: apps");
    }
    let Some(value) = table.get(APPS) else {
        return Vec::new();
    };
    let Some(tables) = value.as_array() else {
        fail(format!("{TABLE}.{APPS}"), "must be [[pusher.apps]] tables");
        return Vec::new();
    };
    let mut apps = Vec::new();
    for (i, table) in tables.iter().enumerate() {
        let place = format!("{TABLE}.{APPS}[{}]", i + 1);
        let Some(table) = table.as_table() else {
            fail(place, "must be a table");
            continue;
        };
        let name = match table.get("id").and_then(toml::Value::as_str) {
            Some(id) if parse::pusher_app_id(id.trim()).is_ok() => {
                format!("{TABLE}.{APPS}.{}", id.trim())
            }
            _ => place.clone(),
        };
        if let Some(app) = app(&name, table, &mut fail) {
            apps.push(Named { name, place, app });
        }
    }
    apps
}

/// One app table, every key of it checked; `None` when any was bad or missing.
fn app(name: &str, table: &toml::Table, fail: &mut impl FnMut(String, &str)) -> Option<PusherApp> {
    let mut ok = true;
    let mut bad = |key: &str, message: &str| {
        fail(format!("{name}.{key}"), message);
        false
    };
    let (mut id, mut key, mut secret) = (None, None, None);
    let mut client_events = true;
    let mut webhook_url = None;
    let mut webhook_events = None;
    let mut limits = switchboard_gateway::PusherLimits::default();
    for (k, value) in table {
        let text = || {
            value
                .as_str()
                .map(str::trim)
                .ok_or("must be a string".to_owned())
        };
        let done = match k.as_str() {
            "id" => text().and_then(parse::pusher_app_id).map(|v| id = Some(v)),
            "key" => text().and_then(parse::pusher_key).map(|v| key = Some(v)),
            "secret" => text().and_then(parse::secret).map(|v| secret = Some(v)),
            "client_events" => match value.as_bool() {
                Some(b) => {
                    client_events = b;
                    Ok(())
                }
                None => Err("must be true or false".to_owned()),
            },
            "webhook_url" => text().and_then(url).map(|v| webhook_url = Some(v)),
            "webhook_events" => events(value).map(|v| webhook_events = Some(v)),
            "max_connections" => {
                count(value, 1, u32::MAX as i64).map(|v| limits.max_connections = Some(v))
            }
            "client_event_rate" => {
                match value.as_float().or(value.as_integer().map(|i| i as f64)) {
                    Some(r) if r.is_finite() && r > 0.0 && r <= 1_000_000.0 => {
                        limits.client_event_rate = r;
                        Ok(())
                    }
                    _ => Err("must be a number of events per second above 0".to_owned()),
                }
            }
            "max_presence_members" => {
                count(value, 1, 100_000).map(|v| limits.max_presence_members = v)
            }
            _ => Err(format!("unknown key; known: {}", KEYS.join(", "))),
        };
        if let Err(message) = done {
            ok = bad(k, &message);
        }
    }
    for (k, missing) in [
        ("id", id.is_none()),
        ("key", key.is_none()),
        ("secret", secret.is_none()),
    ] {
        if missing && !table.contains_key(k) {
            ok = bad(k, "missing: every app needs id, key and secret");
        }
    }
    if table.contains_key("webhook_events") && !table.contains_key("webhook_url") {
        ok = bad(
            "webhook_events",
            "given without a webhook_url: the app sends no webhooks",
        );
    }
    let webhook_events = match (&webhook_url, webhook_events) {
        (None, _) => Vec::new(),
        (Some(_), Some(events)) => events,
        (Some(_), None) => WEBHOOK_EVENTS.iter().map(|e| (*e).to_owned()).collect(),
    };
    if !ok {
        return None;
    }
    Some(PusherApp {
        id: id?,
        key: key?,
        secret: secret?,
        client_events,
        webhook_url,
        webhook_events,
        limits,
    })
}

/// A whole number from `min` to `max`.
fn count(value: &toml::Value, min: i64, max: i64) -> Result<usize, String> {
    match value.as_integer() {
        Some(n) if (min..=max).contains(&n) => Ok(n as usize),
        _ => Err(format!("must be a whole number from {min} to {max}")),
    }
}

/// A webhook URL: `http://` and a host. The message does not repeat the URL,
/// which may carry credentials.
fn url(s: &str) -> Result<String, String> {
    let Some(rest) = s.strip_prefix("http://") else {
        return Err(if s.starts_with("https://") {
            "must start with http://: the node is built without a TLS stack, so it cannot post webhooks over https://".to_owned()
        } else {
            "must be an http:// URL (the node is built without a TLS stack: https:// is not supported)".to_owned()
        });
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must be an http:// URL with a host and no spaces".to_owned());
    }
    Ok(s.to_owned())
}

/// A list of webhook event names, each known and given once.
fn events(value: &toml::Value) -> Result<Vec<String>, String> {
    let known = || format!("known: {}", WEBHOOK_EVENTS.join(", "));
    let Some(items) = value.as_array() else {
        return Err(format!("must be a list of event names; {}", known()));
    };
    let mut events: Vec<String> = Vec::new();
    for item in items {
        let Some(event) = item.as_str() else {
            return Err(format!("must be a list of event names; {}", known()));
        };
        if !WEBHOOK_EVENTS.contains(&event) {
            return Err(format!("{event:?} is no webhook event; {}", known()));
        }
        if events.iter().any(|e| e == event) {
            return Err(format!("{event:?} is listed twice"));
        }
        events.push(event.to_owned());
    }
    Ok(events)
}

/// Records every app whose id or key an earlier app already has. The flags'
/// app comes first, so the error is always on a table of the file; apps with
/// the same id are told apart by their place.
fn check_unique(apps: &[Named], errors: &mut Vec<ConfigError>) {
    for (i, this) in apps.iter().enumerate() {
        let earlier = &apps[..i];
        if let Some(other) = earlier.iter().find(|o| o.app.id == this.app.id) {
            let message = format!(
                "id {:?} is also the id of {}; ids must be unique",
                this.app.id, other.place
            );
            errors.push(file_error(format!("{}.id", this.place), &message));
        }
        if let Some(other) = earlier.iter().find(|o| o.app.key == this.app.key) {
            let message = format!(
                "key {:?} is also the key of {}; keys must be unique",
                this.app.key, other.name
            );
            errors.push(file_error(format!("{}.key", this.name), &message));
        }
    }
}
