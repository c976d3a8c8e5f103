//! The start of an append (and of an in-place write, which keeps only the head of the old
//! object): the old bytes become the first parts of the new upload, so that the commit
//! replaces the object at once and a failed append leaves it as it was.

use super::super::client::Request;
use super::super::probe::if_match_value;
use super::super::MIN_PART_SIZE;
use super::parts::Pipeline;
use crate::backend::Entry;
use crate::error::{Error, ErrorKind, Result};
use futures::StreamExt;
use reqwest::Method;

impl Pipeline {
    /// Checks the object and starts copying it.
    pub(super) async fn start_append(&mut self, existing: &Entry) -> Result<()> {
        let etag = existing.etag.clone().ok_or_else(|| {
            Error::new(
                ErrorKind::Conflict,
                "the file to append to has no version tag",
            )
        })?;
        self.cond.if_match = Some(etag.clone());
        self.s3.check_unchanged(&self.cond).await?;
        // An in-place write keeps only the head of the old object; what follows comes anew.
        let size = existing.size.min(self.opts.keep_head.unwrap_or(u64::MAX));
        if size >= MIN_PART_SIZE {
            // Server-side: the old bytes become the first parts, copied in ranges of at most
            // 5 GiB (`max_copy_range`, at least 10 MiB). The ranges are of equal size, so each is
            // at least 5 MiB (S3's minimum for every part but the last); the new bytes follow
            // as further parts, the last of which may be small. So no tail of the old object
            // needs to pass through this process.
            self.ensure_multipart().await?;
            let n = size.div_ceil(self.inner().opts.max_copy_range);
            let chunk = size.div_ceil(n);
            let mut start = 0;
            while start < size {
                let end = (start + chunk).min(size);
                self.wait_for_slot(0).await?;
                let part = self.next_part;
                self.next_part += 1;
                let id = self.upload_id.clone().unwrap_or_default();
                let s3 = self.s3.clone();
                let copy = s3.copy_part(id, part, (start, end), etag.clone());
                self.tasks.spawn(async move { (copy.await, None, None) });
                start = end;
            }
        } else if size > 0 {
            // Small: read the old bytes (only if still the same object) and send them again,
            // as they come, through the same parts as the new bytes.
            let form = self.inner().caps().etag_form;
            let mut req = Request::new(Method::GET, Some(&self.s3.key))
                .header("if-match", if_match_value(&etag, form));
            if size < existing.size {
                req = req.header("range", format!("bytes=0-{}", size - 1));
            }
            let mut old = Box::pin(self.inner().client.send(&req).await?.stream());
            let mut got = 0u64;
            while let Some(chunk) = old.next().await {
                let chunk = chunk?;
                got += chunk.len() as u64;
                if got > size {
                    break;
                }
                self.push(chunk).await?;
            }
            if got != size {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    "the file changed during the append; nothing was changed",
                ));
            }
        }
        Ok(())
    }
}
