//! What `tern doctor` found: one [`Check`] per line, each ok, warn, FAIL or
//! skip (a check that cannot apply, with the reason), and a fix for every
//! warning and failure. Printed as aligned text or as JSON.

use std::fmt::Write as _;

use serde::Serialize;

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Works, but something an operator should change.
    Warn,
    /// Broken for some clients: the exit status is non-zero.
    Fail,
    /// Cannot apply to this deployment or from here; the detail says why.
    Skip,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Fail => "FAIL",
            Self::Skip => "skip",
        }
    }
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked: `dns`, `stun udp`, `allocate tcp`, `tls expiry`, ...
    pub check: String,
    /// The URL or address it was checked against.
    pub target: String,
    pub status: Status,
    pub detail: String,
    /// What to change, for a warning or a failure.
    pub fix: Option<String>,
}

impl Check {
    pub fn ok(check: impl Into<String>, target: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(Status::Ok, check, target, detail, None)
    }

    pub fn skip(check: impl Into<String>, target: impl Into<String>, why: impl Into<String>) -> Self {
        Self::new(Status::Skip, check, target, why, None)
    }

    pub fn warn(
        check: impl Into<String>,
        target: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self::new(Status::Warn, check, target, detail, Some(fix.into()))
    }

    pub fn fail(
        check: impl Into<String>,
        target: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self::new(Status::Fail, check, target, detail, Some(fix.into()))
    }

    fn new(
        status: Status,
        check: impl Into<String>,
        target: impl Into<String>,
        detail: impl Into<String>,
        fix: Option<String>,
    ) -> Self {
        Self { check: check.into(), target: target.into(), status, detail: detail.into(), fix }
    }
}

/// Every check, in the order they ran.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
}

/// The JSON form: the checks and their tally.
#[derive(Serialize)]
struct Summary<'a> {
    ok: bool,
    failures: usize,
    warnings: usize,
    checks: &'a [Check],
}

impl Report {
    pub fn push(&mut self, check: Check) {
        self.checks.push(check);
    }

    pub fn count(&self, status: Status) -> usize {
        self.checks.iter().filter(|c| c.status == status).count()
    }

    /// No failures (warnings allowed).
    pub fn passed(&self) -> bool {
        self.count(Status::Fail) == 0
    }

    /// The first check named `check`, if it ran.
    pub fn find(&self, check: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.check == check)
    }

    /// One line per check, `fix:` lines under the ones that have one, and a
    /// tally at the end.
    pub fn to_text(&self) -> String {
        let width = self.checks.iter().map(|c| c.check.len()).max().unwrap_or(0);
        let mut text = String::new();
        for check in &self.checks {
            let _ = writeln!(
                text,
                "{:<4}  {:<width$}  {}  {}",
                check.status.as_str(),
                check.check,
                if check.target.is_empty() { "-" } else { &check.target },
                check.detail
            );
            if let Some(fix) = &check.fix {
                let _ = writeln!(text, "{:<4}  {:<width$}  fix: {fix}", "", "");
            }
        }
        let _ = writeln!(
            text,
            "{} checks: {} ok, {} warnings, {} failures, {} skipped",
            self.checks.len(),
            self.count(Status::Ok),
            self.count(Status::Warn),
            self.count(Status::Fail),
            self.count(Status::Skip)
        );
        text
    }

    pub fn to_json(&self) -> String {
        let summary = Summary {
            ok: self.passed(),
            failures: self.count(Status::Fail),
            warnings: self.count(Status::Warn),
            checks: &self.checks,
        };
        serde_json::to_string_pretty(&summary).expect("the report is plain data, which serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_aligns_checks_and_puts_fixes_under_them() {
        let mut report = Report::default();
        report.push(Check::ok("dns", "turn.example.com", "A 203.0.113.5"));
        report.push(Check::fail("relayed address", "203.0.113.5:3478", "10.0.0.5 is private", "set external_ip"));
        report.push(Check::skip("rest expiry", "203.0.113.5:3478", "needs --secret"));
        let text = report.to_text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "ok    dns              turn.example.com  A 203.0.113.5");
        assert_eq!(lines[1], "FAIL  relayed address  203.0.113.5:3478  10.0.0.5 is private");
        assert_eq!(lines[2], "                       fix: set external_ip");
        assert_eq!(lines[4], "3 checks: 1 ok, 0 warnings, 1 failures, 1 skipped");
        assert!(!report.passed());
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).expect("JSON");
        assert_eq!(json["ok"], false);
        assert_eq!(json["failures"], 1);
        assert_eq!(json["checks"][1]["status"], "fail");
        assert_eq!(json["checks"][1]["fix"], "set external_ip");
        assert_eq!(json["checks"][0]["fix"], serde_json::Value::Null);
    }
}
