//! Reading a directory of the prefix in pages, every page at the revision of the first.
//!
//! One range read of a large directory does not fit in one gRPC answer: etcd's clients refuse
//! answers over 4 MiB by default, which is about 18,000 typical records, so the follow's snapshot,
//! the take-over of a dead replica's keys and a big service's listing would fail outright at that
//! size (and keep failing on every retry). Pages of [`PAGE`] keys keep each answer small; a page
//! that is still too large (records near the body limit) is asked for again at half the size. All
//! pages are read at one revision, so together they are one consistent snapshot, as a single read
//! would have been; if that revision is compacted away meanwhile, the read fails and the caller
//! retries from a new one.

use etcd_client::{Client, GetOptions, KeyValue};
use tonic::Code;

/// Keys per page: at a typical record (200–300 bytes) well under 1 MiB per answer.
pub(super) const PAGE: i64 = 1000;

/// The end of the range of keys starting with `prefix` (etcd's "prefix end": the prefix with its
/// last byte below 0xff incremented; no such byte means "to the end of the keyspace").
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Every key starting with `dir` (with values unless `keys_only`), read in pages.
pub(super) async fn read_dir(
    client: &mut Client,
    dir: &str,
    keys_only: bool,
) -> Result<Vec<KeyValue>, etcd_client::Error> {
    let mut kvs = Vec::new();
    read_dir_pages(client, dir, keys_only, |page| kvs.extend(page)).await?;
    Ok(kvs)
}

/// [`read_dir`], handing each page to `each` as it arrives (a large directory is never held
/// whole: each page is decoded into what the caller keeps, and dropped). The revision read at.
pub(super) async fn read_dir_pages(
    client: &mut Client,
    dir: &str,
    keys_only: bool,
    mut each: impl FnMut(Vec<KeyValue>),
) -> Result<i64, etcd_client::Error> {
    let end = prefix_end(dir.as_bytes());
    let mut from = dir.as_bytes().to_vec();
    let mut revision = 0;
    let mut limit = PAGE;
    loop {
        let mut options = GetOptions::new().with_range(end.clone()).with_limit(limit);
        if revision > 0 {
            options = options.with_revision(revision);
        }
        if keys_only {
            options = options.with_keys_only();
        }
        let mut resp = match client.get(from.clone(), Some(options)).await {
            Ok(r) => r,
            Err(etcd_client::Error::GRpcStatus(s))
                if s.code() == Code::OutOfRange
                    && s.message().contains("message length too large")
                    && limit > 1 =>
            {
                limit = (limit / 2).max(1);
                continue;
            }
            Err(e) => return Err(e),
        };
        if revision == 0 {
            revision = resp.header().map_or(0, |h| h.revision());
        }
        let more = resp.more();
        let page = resp.take_kvs();
        let Some(last) = page.last() else {
            break;
        };
        // The next page starts just after this one's last key.
        from = last.key().to_vec();
        from.push(0);
        each(page);
        if !more {
            break;
        }
        limit = PAGE;
    }
    Ok(revision)
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn the_prefix_end_is_the_first_key_past_every_key_with_the_prefix() {
        assert_eq!(prefix_end(b"/services/"), b"/services0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}
