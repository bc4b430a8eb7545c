//! The search for leaked secrets: every answer (body and headers), log line, command output and
//! admin page a test collects goes through [`Grep`], which fails the test on the first secret
//! found, in full or by its tail.

use std::process::Output;

use http::HeaderMap;

use crate::client::Resp;
use crate::serve::Serve;

/// Searches everything twinreg said for the secrets, and counts what it searched.
pub struct Grep {
    secrets: Vec<(String, String)>,
    pub answers: usize,
    pub lines: usize,
}

impl Grep {
    pub fn new(secrets: &[(&str, &str)]) -> Grep {
        let mut all = Vec::new();
        for (name, s) in secrets {
            all.push((name.to_string(), s.to_string()));
            // A truncated or re-quoted leak still contains its tail.
            let tail = &s[s.len().saturating_sub(16)..];
            all.push((format!("{name} (last 16 characters)"), tail.to_owned()));
        }
        Grep {
            secrets: all,
            answers: 0,
            lines: 0,
        }
    }

    pub fn check(&self, what: &str, text: &str) {
        for (name, s) in &self.secrets {
            assert!(
                !text.contains(s.as_str()),
                "the {name} leaked in {what}:\n{text}"
            );
        }
    }

    pub fn text(&mut self, what: &str, text: &str) {
        self.check(what, text);
        self.answers += 1;
    }

    pub fn headers(&mut self, what: &str, headers: &HeaderMap) {
        let all: String = headers
            .iter()
            .map(|(k, v)| format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())))
            .collect();
        self.check(&format!("{what} (headers)"), &all);
    }

    pub fn resp(&mut self, what: &str, r: &Resp) {
        self.headers(what, &r.headers);
        self.text(what, &r.text);
    }

    pub fn debug(&mut self, what: &str, v: &impl std::fmt::Debug) {
        self.text(what, &format!("{v:?}"));
    }

    pub fn output(&mut self, what: &str, out: &Output) {
        self.text(
            &format!("{what} (stdout)"),
            &String::from_utf8_lossy(&out.stdout),
        );
        self.text(
            &format!("{what} (stderr)"),
            &String::from_utf8_lossy(&out.stderr),
        );
    }

    pub fn log(&mut self, what: &str, lines: &[String]) {
        for l in lines {
            self.check(what, l);
        }
        self.lines += lines.len();
    }

    /// `/metrics`, `/readyz`, `/healthz`, the status page and its JSON.
    pub async fn admin(&mut self, tw: &Serve) {
        for p in ["/metrics", "/readyz", "/healthz", "/", "/status.json"] {
            let (status, headers, body) = tw.admin_get(p).await;
            assert!(status == 200 || status == 503, "{p}: {status}");
            self.headers(p, &headers);
            self.text(p, &body);
        }
    }
}
