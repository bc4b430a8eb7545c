//! Reading a `/v1/health/service/{service}` (or `/v1/health/checks/{service}`) answer entry by
//! entry, as it arrives.
//!
//! Consul answers a health query with the whole service, every time: a service of 100,000
//! instances is a body of tens of megabytes (one to two kilobytes an entry from a real agent),
//! and the sweep and every watch of it read one after each change (the follow reads the lighter
//! checks answer, the same way). Collecting that
//! body and then decoding it held both at once, for every reader; here each element of the
//! top-level array is decoded by serde_json while the frames arrive, turned into what the caller
//! keeps the moment it is complete, and its bytes are dropped. An entry that does not read as a
//! health entry is skipped with a warning, and the others are kept (another tool's service must
//! not hide twinreg's).

use serde::Deserialize;

use super::{HealthCheck, HealthEntry, KIND};
use crate::model::{Instance, InstanceId, InstanceKey, ServiceName};
use crate::registry::RegistryError;

/// A twinreg instance of a health answer: the record, whether it is live (no critical check),
/// and its check's notes.
pub(crate) type HealthCopy = (Instance, bool, String);

/// The elements of a JSON array, decoded (as `T`) as the array's bytes arrive: each element is
/// read by serde_json straight from the bytes, where it starts, and dropped from the buffer once
/// read; an element not whole yet is read again when more bytes come (entries are a few
/// kilobytes, frames up to 16 KiB: few are read twice).
pub(crate) struct Elements<T> {
    /// Bytes not yet consumed, from the start of the element being read.
    buf: Vec<u8>,
    stage: Stage,
    /// The element being read is not a `T`: it is being skipped, with what was wrong with it.
    skipping: Option<Skipped>,
    _t: std::marker::PhantomData<fn() -> T>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Before the `[`.
    Open,
    /// After the `[`: an element or the `]`.
    First,
    /// After an element: a `,` or the `]`.
    Next,
    /// After a `,`: an element.
    Element,
    Closed,
}

/// An element that is not a `T`: its `Service.ID` when it has one, and why it did not read.
#[derive(Debug)]
pub(crate) struct Skipped {
    pub id: String,
    pub error: serde_json::Error,
}

impl<T: serde::de::DeserializeOwned> Default for Elements<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: serde::de::DeserializeOwned> Elements<T> {
    pub(crate) fn new() -> Self {
        Self {
            buf: Vec::new(),
            stage: Stage::Open,
            skipping: None,
            _t: std::marker::PhantomData,
        }
    }

    /// Takes the next bytes of the answer; `each` gets every element completed by them, or what
    /// was wrong with one that is not a `T`. An answer that is not an array, or has anything
    /// after it, is an error.
    pub(crate) fn feed(
        &mut self,
        chunk: &[u8],
        mut each: impl FnMut(Result<T, Skipped>),
    ) -> Result<(), &'static str> {
        self.buf.extend_from_slice(chunk);
        let mut pos = 0;
        let result = loop {
            while self.buf.get(pos).is_some_and(u8::is_ascii_whitespace) {
                pos += 1;
            }
            let Some(&b) = self.buf.get(pos) else {
                break Ok(());
            };
            match (self.stage, b) {
                (Stage::Open, b'[') => self.stage = Stage::First,
                (Stage::Open, _) => break Err("the answer is not a JSON array"),
                (Stage::First | Stage::Next, b']') => self.stage = Stage::Closed,
                (Stage::Next, b',') => self.stage = Stage::Element,
                (Stage::Next, _) => break Err("elements are not separated by commas"),
                (Stage::Closed, _) => break Err("data after the answer's array"),
                (Stage::First | Stage::Element, _) => {
                    match Self::element(&mut self.skipping, &self.buf[pos..]) {
                        Read::Done(used, element) => {
                            each(element);
                            pos += used;
                            self.stage = Stage::Next;
                            continue;
                        }
                        Read::Partial => break Ok(()),
                        Read::Broken => break Err("an element is not valid JSON"),
                    }
                }
            }
            pos += 1;
        };
        self.buf.drain(..pos);
        result
    }

    /// Reads the element `bytes` start with.
    fn element(skipping: &mut Option<Skipped>, bytes: &[u8]) -> Read<T> {
        use serde_json::error::Category;
        if skipping.is_none() {
            let mut values = serde_json::Deserializer::from_slice(bytes).into_iter::<T>();
            match values.next() {
                Some(Ok(v)) => return Read::Done(values.byte_offset(), Ok(v)),
                Some(Err(e)) if e.classify() == Category::Data => {
                    *skipping = Some(Skipped {
                        id: String::new(),
                        error: e,
                    })
                }
                Some(Err(e)) if e.is_eof() => return Read::Partial,
                _ => return Read::Broken,
            }
        }
        // Not a `T`: read past it, keeping its service ID for the warning when it has one.
        #[derive(Deserialize)]
        struct Named {
            #[serde(rename = "Service")]
            service: Option<Id>,
        }
        #[derive(Deserialize)]
        struct Id {
            #[serde(rename = "ID")]
            id: Option<String>,
        }
        let mut named = serde_json::Deserializer::from_slice(bytes).into_iter::<Named>();
        let id = match named.next() {
            Some(Ok(n)) => Some((named.byte_offset(), n.service.and_then(|s| s.id))),
            Some(Err(e)) if e.is_eof() => return Read::Partial,
            _ => None,
        };
        let (used, id) = match id {
            Some(found) => found,
            None => {
                let mut any = serde_json::Deserializer::from_slice(bytes)
                    .into_iter::<serde::de::IgnoredAny>();
                match any.next() {
                    Some(Ok(_)) => (any.byte_offset(), None),
                    Some(Err(e)) if e.is_eof() => return Read::Partial,
                    _ => return Read::Broken,
                }
            }
        };
        let mut skipped = skipping.take().expect("set above");
        skipped.id = id.unwrap_or_default();
        Read::Done(used, Err(skipped))
    }

    /// The answer ended: an error unless its array was closed.
    pub(crate) fn finish(&self) -> Result<(), &'static str> {
        if self.stage == Stage::Closed {
            Ok(())
        } else {
            Err("the answer ended before its array did")
        }
    }
}

enum Read<T> {
    /// The element took this many bytes.
    Done(usize, Result<T, Skipped>),
    /// The element is not whole yet.
    Partial,
    /// Not JSON.
    Broken,
}

/// An element of a health or checks answer, and what of it concerns twinreg.
pub(crate) trait Element: serde::de::DeserializeOwned {
    /// What a twinreg instance's element yields; `None` for anything else.
    type Seen;
    /// The endpoint, for errors and warnings.
    const ANSWER: &'static str;
    fn seen(self, service: &ServiceName) -> Option<Self::Seen>;
}

impl Element for HealthEntry {
    type Seen = HealthCopy;
    const ANSWER: &'static str = "health/service";
    fn seen(self, service: &ServiceName) -> Option<HealthCopy> {
        self.into_copy(service)
    }
}

/// Of each twinreg instance's own check (`service:{service}.{id}`): the instance's key and the
/// check's notes, which name its holder and generation. Checks only, no node and no service
/// record: about a fifth of the bytes of the health answer for the same instances.
impl Element for HealthCheck {
    type Seen = (InstanceKey, String);
    const ANSWER: &'static str = "health/checks";
    fn seen(self, service: &ServiceName) -> Option<(InstanceKey, String)> {
        let (svc, id) = self.service_id.split_once('.')?;
        let own = self
            .check_id
            .strip_prefix("service:")
            .is_some_and(|c| c == self.service_id);
        if svc != service.as_str() || !own {
            return None;
        }
        let key = InstanceKey {
            service: service.clone(),
            id: InstanceId::parse(id).ok()?,
        };
        Some((key, self.notes))
    }
}

/// Decodes a `/v1/health/service/{service}` (elements `E` = [`HealthEntry`]) or
/// `/v1/health/checks/{service}` ([`HealthCheck`]) answer as it arrives, keeping `keep` of each
/// twinreg instance in it.
pub(crate) struct Reader<'a, E, T, F> {
    service: &'a ServiceName,
    elements: Elements<E>,
    keep: F,
    out: Vec<T>,
}

/// A health answer's reader.
pub(crate) type HealthReader<'a, T, F> = Reader<'a, HealthEntry, T, F>;
/// A checks answer's reader.
pub(crate) type CheckReader<'a, T, F> = Reader<'a, HealthCheck, T, F>;

impl<'a, E: Element, T, F: FnMut(E::Seen) -> Option<T>> Reader<'a, E, T, F> {
    pub(crate) fn new(service: &'a ServiceName, keep: F) -> Self {
        Self {
            service,
            elements: Elements::new(),
            keep,
            out: Vec::new(),
        }
    }

    pub(crate) fn feed(&mut self, chunk: &[u8]) -> Result<(), RegistryError> {
        let Self {
            service,
            elements,
            keep,
            out,
        } = self;
        elements
            .feed(chunk, |element| match element {
                Ok(e) => {
                    if let Some(kept) = e.seen(service).and_then(&mut *keep) {
                        out.push(kept);
                    }
                }
                Err(Skipped { id, error }) => {
                    tracing::warn!(answer = E::ANSWER, service_id = %id, %error, "skipping an element of a consul answer twinreg cannot read");
                }
            })
            .map_err(|why| unreadable(E::ANSWER, why))
    }

    pub(crate) fn finish(self) -> Result<Vec<T>, RegistryError> {
        self.elements
            .finish()
            .map_err(|why| unreadable(E::ANSWER, why))?;
        Ok(self.out)
    }
}

fn unreadable(what: &str, why: &str) -> RegistryError {
    RegistryError::unavailable(KIND, format!("consul: unreadable {what} answer: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct A {
        a: String,
    }

    /// What was read of each element: `a`'s value, or `skip <id>`.
    fn read(chunks: &[&[u8]]) -> Result<Vec<String>, &'static str> {
        let mut e = Elements::<A>::new();
        let mut got = Vec::new();
        for c in chunks {
            e.feed(c, |el| {
                got.push(match el {
                    Ok(A { a }) => a,
                    Err(s) => format!("skip {}", s.id),
                })
            })?;
        }
        e.finish()?;
        Ok(got)
    }

    #[test]
    fn elements_are_read_wherever_the_chunks_end() {
        let body =
            br#" [ {"a":"x]}\"{","b":[1,{"c":2}]}, 7, {"Service":{"ID":"s-1"}}, {"a":"y"} ] "#;
        let whole = read(&[body]).unwrap();
        assert_eq!(whole, vec![r#"x]}"{"#, "skip ", "skip s-1", "y"]);
        for cut in 0..body.len() {
            let (a, b) = body.split_at(cut);
            assert_eq!(read(&[a, b]).unwrap(), whole, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(read(&bytes).unwrap(), whole);
    }

    #[test]
    fn what_is_not_one_whole_array_is_an_error() {
        assert_eq!(read(&[b"[]"]).unwrap(), Vec::<String>::new());
        assert_eq!(read(&[b" [ ] "]).unwrap(), Vec::<String>::new());
        assert!(read(&[b"{}"]).is_err());
        assert!(read(&[br#"[{"a":"x"}"#]).is_err());
        assert!(read(&[br#"[{"a":"x"}]]"#]).is_err());
        assert!(read(&[br#"[{"a":"x"}] x"#]).is_err());
        assert!(read(&[br#"[{"a":"x"} {"a":"y"}]"#]).is_err());
        assert!(read(&[b"[{]"]).is_err());
        assert!(read(&[b"[,]"]).is_err());
        assert!(read(&[b""]).is_err());
    }

    #[test]
    fn a_checks_answer_yields_twinregs_own_instance_checks() {
        let body = br#"[
          {"Node":"n","CheckID":"service:payments.a","ServiceID":"payments.a","ServiceName":"payments",
           "Status":"passing","Notes":"twinreg ttl_seconds=30 generation=7 replica=r1"},
          {"Node":"n","CheckID":"_service_maintenance:payments.a","ServiceID":"payments.a",
           "ServiceName":"payments","Status":"critical","Notes":"deploy"},
          {"Node":"n","CheckID":"web-ttl","ServiceID":"payments-web","ServiceName":"payments",
           "Status":"passing","Notes":""},
          {"Node":"n","CheckID":"service:payment.b","ServiceID":"payment.b","ServiceName":"payments",
           "Status":"passing","Notes":"generation=1"},
          {"CheckID":17},
          {"Node":"n","CheckID":"service:payments.b","ServiceID":"payments.b","ServiceName":"payments",
           "Status":"critical","Notes":"twinreg ttl_seconds=30 generation=9 replica=r2"}
        ]"#;
        let service = ServiceName::parse("payments").unwrap();
        let whole = |chunks: &[&[u8]]| {
            let mut r = CheckReader::new(&service, |(key, notes): (InstanceKey, String)| {
                Some((key.id.to_string(), notes))
            });
            for c in chunks {
                r.feed(c).unwrap();
            }
            r.finish().unwrap()
        };
        let got = whole(&[body]);
        assert_eq!(
            got,
            [
                (
                    "a".into(),
                    "twinreg ttl_seconds=30 generation=7 replica=r1".into()
                ),
                (
                    "b".into(),
                    "twinreg ttl_seconds=30 generation=9 replica=r2".into()
                ),
            ],
            "only each instance's own check, whatever its status; the unreadable one skipped"
        );
        let (x, y) = body.split_at(100);
        assert_eq!(whole(&[x, y]), got);
        let mut r = CheckReader::new(&service, |_| Some(()));
        assert!(r.feed(b"{}").is_err(), "not an array");
    }

    #[test]
    fn only_the_element_being_read_is_buffered() {
        let mut e = Elements::<A>::new();
        let mut n = 0;
        e.feed(b"[", |_| n += 1).unwrap();
        for i in 0..1000 {
            let sep: &[u8] = if i == 0 { b"" } else { b"," };
            e.feed(sep, |_| n += 1).unwrap();
            e.feed(br#"{"a":"x"}"#, |_| n += 1).unwrap();
            assert!(e.buf.is_empty(), "buffered {}", e.buf.len());
        }
        e.feed(br#",{"a":"#, |_| n += 1).unwrap();
        assert_eq!(e.buf, br#"{"a":"#);
        e.feed(br#""z"}]"#, |_| n += 1).unwrap();
        e.finish().unwrap();
        assert_eq!(n, 1001);
    }
}
