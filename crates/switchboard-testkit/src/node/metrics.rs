//! A node's Prometheus metrics (`GET /metrics` on the internal listener): read a
//! value, or wait for one.

use std::time::Duration;

use super::Node;
use crate::eventually;

impl Node {
    /// The Prometheus text of `GET /metrics`.
    async fn metrics_text(&self) -> String {
        let response = self.internal_raw("GET", "/metrics", &[], None).await;
        assert_eq!(response.status, 200, "GET /metrics: {}", response.text());
        response.text()
    }

    /// The sum of all samples of metric `name` (0 if it has none yet).
    pub async fn metric(&self, name: &str) -> f64 {
        sum_samples(&self.metrics_text().await, name, &[])
    }

    /// The sum of the samples of `name` whose labels include all of `labels`.
    pub async fn metric_with(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        sum_samples(&self.metrics_text().await, name, labels)
    }

    /// Waits until `check(value of metric name)` holds.
    pub async fn wait_metric(&self, name: &str, what: &str, check: impl Fn(f64) -> bool) -> f64 {
        self.wait_metric_with(name, &[], what, check).await
    }

    /// Waits until `check(value of metric name{labels})` holds.
    pub async fn wait_metric_with(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        what: &str,
        check: impl Fn(f64) -> bool,
    ) -> f64 {
        eventually(
            &format!("node {}: {name}{labels:?} {what}", self.id),
            Duration::from_secs(10),
            || async {
                let v = self.metric_with(name, labels).await;
                if check(v) { Ok(v) } else { Err(format!("{v}")) }
            },
        )
        .await
    }
}

/// One sample of Prometheus text.
#[derive(Debug, Clone)]
struct Sample {
    /// Metric name (with any `_bucket`/`_sum`/`_count` suffix).
    name: String,
    /// Label pairs.
    labels: Vec<(String, String)>,
    /// Value.
    value: f64,
}

/// Parses Prometheus text exposition into samples, skipping comments.
fn parse_samples(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, labels, rest) = match line.find(['{', ' ']) {
            Some(i) if line.as_bytes()[i] == b'{' => {
                let Some(close) = line.rfind('}') else {
                    continue;
                };
                (
                    &line[..i],
                    parse_labels(&line[i + 1..close]),
                    &line[close + 1..],
                )
            }
            Some(i) => (&line[..i], Vec::new(), &line[i..]),
            None => continue,
        };
        let Some(value) = rest.split_whitespace().next() else {
            continue;
        };
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => match v.parse() {
                Ok(v) => v,
                Err(_) => continue,
            },
        };
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    samples
}

fn sum_samples(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    parse_samples(text)
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        })
        .map(|s| s.value)
        .sum()
}

fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut labels = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(',') | Some(' ')) {
            chars.next();
        }
        let mut key = String::new();
        for c in chars.by_ref() {
            if c == '=' {
                break;
            }
            key.push(c);
        }
        if key.is_empty() {
            return labels;
        }
        if chars.next() != Some('"') {
            return labels;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.push((key.trim().to_owned(), value));
    }
}

#[cfg(test)]
mod tests {
    use super::parse_samples;

    #[test]
    fn prometheus_text_is_parsed() {
        let text = r#"
# HELP switchboard_connections Open connections.
# TYPE switchboard_connections gauge
switchboard_connections 3
switchboard_disconnects_total{reason="slow_consumer"} 1
switchboard_disconnects_total{reason="client_closed",node="a \"b\""} 4
switchboard_delivery_latency_seconds_bucket{le="+Inf"} 7
switchboard_delivery_latency_seconds_sum 0.25
switchboard_api_requests_total{route="/api/v1/publish",status="200"} 1e3
"#;
        let samples = parse_samples(text);
        assert_eq!(samples.len(), 6);
        assert_eq!(samples[0].name, "switchboard_connections");
        assert_eq!(samples[0].value, 3.0);
        assert_eq!(
            samples[2].labels,
            [
                ("reason".to_owned(), "client_closed".to_owned()),
                ("node".to_owned(), "a \"b\"".to_owned())
            ]
        );
        assert_eq!(samples[3].value, 7.0);
        assert_eq!(samples[5].value, 1000.0);
    }
}
