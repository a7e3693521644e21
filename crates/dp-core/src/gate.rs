//! All or nothing before the switch: may the hosts of one deploy go live?
//!
//! The tools that decide (dp-migrate before migrating, dp-restart before switching, and
//! `dp deploy` through them) ask [`check`]. If any host failed before the switch, no host
//! switches and no pre-phase migration is applied, except that up to `allow_unreachable`
//! hosts that could not be connected to at all ([`ErrorKind::Unreachable`]) may be left
//! out when the user asked for it. [`hold_back`] then says on every other record why it
//! was not switched.

use crate::{ErrorKind, Record};

/// True when dp-sync found the record's release already `current` on its host with the
/// same content (`steps.sync.already_live`): redeploying the same release is a no-op, so
/// the later steps leave that host alone (no migration, no switch, no restart).
pub fn already_live(record: &Record) -> bool {
    !record.failed()
        && record
            .steps
            .get("sync")
            .and_then(|s| s.get("already_live"))
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false)
}

/// True when there are hosts and every one that did not fail is [`already_live`]: the
/// whole deploy is a no-op (a host that failed still fails it).
pub fn all_already_live(records: &[Record]) -> bool {
    records.iter().any(already_live) && records.iter().all(|r| r.failed() || already_live(r))
}

/// Why the fleet may not switch: the host that failed first, in its step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    /// The host.
    pub host: String,
    /// The step it failed in.
    pub step: String,
    /// Why, in words (the host's own error, or how many were unreachable).
    pub message: String,
}

impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} failed in {}: {}", self.host, self.step, self.message)
    }
}

/// `Ok(n)` when the hosts that did not fail may go live, `n` being how many unreachable
/// hosts are left out (at most `allow_unreachable`); else the host that blocks them.
/// A failure of any other kind blocks, and so do more unreachable hosts than allowed.
pub fn check(records: &[Record], allow_unreachable: usize) -> Result<usize, Blocked> {
    let blocked = |r: &Record, message: String| Blocked {
        host: r.host.clone(),
        step: r.error.as_ref().map(|e| e.step.clone()).unwrap_or_default(),
        message,
    };
    let message = |r: &Record| {
        r.error
            .as_ref()
            .map(|e| e.message.clone())
            .unwrap_or_default()
    };
    // A host's own failure names the cause better than the records it held back.
    let own = records.iter().find(|r| {
        !matches!(
            r.error_kind(),
            None | Some(ErrorKind::Unreachable) | Some(ErrorKind::NotSwitched)
        )
    });
    if let Some(r) = own {
        return Err(blocked(r, message(r)));
    }
    let unreachable: Vec<&Record> = records
        .iter()
        .filter(|r| r.error_kind() == Some(ErrorKind::Unreachable))
        .collect();
    if unreachable.len() > allow_unreachable {
        let r = unreachable[0];
        let mut m = message(r);
        if allow_unreachable > 0 || unreachable.len() > 1 {
            m = format!(
                "{m} ({} hosts unreachable, {allow_unreachable} allowed by --allow-unreachable)",
                unreachable.len()
            );
        }
        return Err(blocked(r, m));
    }
    if let Some(r) = records
        .iter()
        .find(|r| r.error_kind() == Some(ErrorKind::NotSwitched))
    {
        return Err(blocked(r, message(r)));
    }
    Ok(unreachable.len())
}

/// Applies [`check`]: when the fleet may not switch, every record that has not failed is
/// marked [`ErrorKind::NotSwitched`] in `step`, naming the host, step and cause that
/// blocked it, and the [`Blocked`] is returned.
pub fn hold_back(
    records: &mut [Record],
    step: &str,
    allow_unreachable: usize,
) -> Result<usize, Blocked> {
    let result = check(records, allow_unreachable);
    if let Err(why) = &result {
        mark_held_back(records, step, why);
    }
    result
}

/// Marks every record that has not failed as [`ErrorKind::NotSwitched`] in `step`, held
/// back by `why`.
pub fn mark_held_back(records: &mut [Record], step: &str, why: &Blocked) {
    for r in records.iter_mut() {
        r.fail_as(step, ErrorKind::NotSwitched, format!("not switched: {why}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(kinds: &[Option<ErrorKind>]) -> Vec<Record> {
        kinds
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let mut r = Record::new(format!("h{}", i + 1));
                if let Some(k) = k {
                    r.fail_as("sync", *k, "boom");
                }
                r
            })
            .collect()
    }

    #[test]
    fn any_failure_blocks_unless_only_allowed_unreachable_hosts() {
        assert_eq!(check(&fleet(&[None, None]), 0), Ok(0));
        let f = fleet(&[None, Some(ErrorKind::Failed), None]);
        assert_eq!(check(&f, 5).unwrap_err().host, "h2");
        let u = fleet(&[None, Some(ErrorKind::Unreachable), None]);
        assert_eq!(check(&u, 0).unwrap_err().host, "h2");
        assert_eq!(check(&u, 1), Ok(1));
        let two = fleet(&[Some(ErrorKind::Unreachable), Some(ErrorKind::Unreachable)]);
        let e = check(&two, 1).unwrap_err();
        assert!(e.message.contains("2 hosts unreachable, 1 allowed"), "{e}");
        // The host's own failure is named, not a record it held back.
        let mixed = fleet(&[Some(ErrorKind::NotSwitched), Some(ErrorKind::Failed)]);
        assert_eq!(check(&mixed, 0).unwrap_err().host, "h2");
    }

    #[test]
    fn held_back_records_name_the_cause() {
        let mut f = fleet(&[None, Some(ErrorKind::Failed), None]);
        hold_back(&mut f, "restart", 0).unwrap_err();
        let e = f[0].error.clone().unwrap();
        assert_eq!(
            (e.step.as_str(), e.kind),
            ("restart", ErrorKind::NotSwitched)
        );
        assert_eq!(e.message, "not switched: h2 failed in sync: boom");
        assert_eq!(f[1].error.as_ref().unwrap().kind, ErrorKind::Failed);
    }
}
