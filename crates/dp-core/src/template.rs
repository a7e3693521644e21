//! Command and URL templates: `{host}`, `{addr}`, `{release}`, `{root}`, and each of the
//! host's `vars` from deploy.toml (as `{name}` or `{vars.name}`). Values put into a shell
//! command are quoted with [`crate::quote`]; values put into a URL are percent-encoded,
//! so no value can inject anything.

use crate::quote::{quote_str, QuoteError};
use crate::Record;

/// How substituted values are escaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    /// For a POSIX shell command: each value becomes one quoted word.
    Shell,
    /// For a URL: each value is percent-encoded.
    Url,
}

/// The value of each placeholder for `record`, with `release` as `{release}`.
fn values(record: &Record, release: &str) -> Vec<(String, String)> {
    let mut v = vec![
        ("host".to_string(), record.host.clone()),
        ("addr".to_string(), record.address().to_string()),
        ("release".to_string(), release.to_string()),
        ("root".to_string(), record.root.clone().unwrap_or_default()),
        (
            "port".to_string(),
            record.port.map(|p| p.to_string()).unwrap_or_default(),
        ),
    ];
    if let Some(serde_json::Value::Object(vars)) = record.extra.get("vars") {
        for (k, val) in vars {
            let text = match val {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            v.retain(|(name, _)| name != k);
            v.push((k.clone(), text.clone()));
            v.push((format!("vars.{k}"), text));
        }
    }
    v
}

/// Renders `template` for `record`. Unknown placeholders are left as they are.
pub fn render(
    template: &str,
    record: &Record,
    release: &str,
    escape: Escape,
) -> Result<String, QuoteError> {
    let vals = values(record, release);
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after.find('}').map(|end| (&after[..end], end)) {
            Some((name, end)) if vals.iter().any(|(n, _)| n == name) => {
                let value = &vals.iter().find(|(n, _)| n == name).expect("checked").1;
                match escape {
                    Escape::Shell => out.push_str(&quote_str(value)?),
                    Escape::Url => out.push_str(&percent_encode(value)),
                }
                rest = &after[end + 1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~:[]".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_quoted_or_encoded() {
        let mut r = Record::new("web1");
        r.addr = Some("10.0.0.5".into());
        r.root = Some("/srv/it's".into());
        r.extra.insert(
            "vars".into(),
            serde_json::json!({"port": 8001, "evil": "$(rm -rf /); x"}),
        );
        let cmd = render(
            "restart {host} {root} {port} {evil} {unknown}",
            &r,
            "r1",
            Escape::Shell,
        )
        .unwrap();
        assert_eq!(
            cmd,
            "restart web1 '/srv/it'\\''s' 8001 '$(rm -rf /); x' {unknown}"
        );
        let url = render(
            "http://{addr}:{vars.port}/health?x={evil}",
            &r,
            "r1",
            Escape::Url,
        )
        .unwrap();
        assert_eq!(
            url,
            "http://10.0.0.5:8001/health?x=%24%28rm%20-rf%20%2F%29%3B%20x"
        );
    }
}
