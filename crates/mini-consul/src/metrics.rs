//! `GET /v1/agent/metrics`: the agent's request count, in the two shapes Consul serves it: JSON
//! by default (`Samples` of `consul.api.http`, labelled by method and path), Prometheus text with
//! `?format=prometheus` (`consul_api_http_count`). Consul times every HTTP request under that
//! name; mini-consul counts them (no timings), which is what a client measuring the load it puts
//! on the agent reads.

use std::collections::BTreeMap;
use std::sync::Mutex;

use bytes::Bytes;
use http::{HeaderValue, Response, header};
use http_body_util::Full;
use serde::Serialize;

use crate::http::{Req, Resp, json};

/// Requests served, by method and Consul's path label.
#[derive(Default)]
pub struct Requests {
    counts: Mutex<BTreeMap<(String, &'static str), u64>>,
}

impl Requests {
    /// Counts one request to the route `pattern` (`/v1/agent/check/pass/`), or `other`.
    pub fn count(&self, method: &str, pattern: &'static str) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        *c.entry((method.to_owned(), pattern)).or_default() += 1;
    }

    fn snapshot(&self) -> Vec<((String, &'static str), u64)> {
        let c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// Consul's label for a route: the pattern without its leading `/`, `/` turned into `_`.
fn path_label(pattern: &str) -> String {
    pattern.trim_start_matches('/').replace('/', "_")
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Sample {
    name: &'static str,
    count: u64,
    labels: BTreeMap<&'static str, String>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Summary {
    timestamp: String,
    gauges: Vec<()>,
    points: Vec<()>,
    counters: Vec<()>,
    samples: Vec<Sample>,
}

pub fn serve(requests: &Requests, r: &Req) -> Resp {
    let counts = requests.snapshot();
    if r.query("format") == Some("prometheus") {
        let mut body = String::from(
            "# HELP consul_api_http Samples of HTTP requests served by the agent.\n\
             # TYPE consul_api_http summary\n",
        );
        for ((method, pattern), n) in counts {
            let path = path_label(pattern);
            body.push_str(&format!(
                "consul_api_http_count{{method=\"{method}\",path=\"{path}\"}} {n}\n"
            ));
        }
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        return resp;
    }
    let samples = counts
        .into_iter()
        .map(|((method, pattern), count)| Sample {
            name: "consul.api.http",
            count,
            labels: BTreeMap::from([("method", method), ("path", path_label(pattern))]),
        })
        .collect();
    json(&Summary {
        timestamp: humantime::format_rfc3339_seconds(std::time::SystemTime::now())
            .to_string()
            .replace('T', " ")
            .replace('Z', " +0000 UTC"),
        gauges: vec![],
        points: vec![],
        counters: vec![],
        samples,
    })
}
