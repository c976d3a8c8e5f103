//! The virtual file tree: one user's view of the site tree and its mounts.
//!
//! A client path is normalised once ([`VPath::resolve`]), re-rooted under the user's home,
//! checked against her folder permissions, and only then resolved to a (backend, key) pair:
//! the longest mount point that contains it wins, else the site tree. No I/O happens before
//! the permission check.

use crate::backend::{Backend, Entry, EntryKind, ListStream};
use crate::error::{Error, ErrorKind, Result};
use crate::known::Known;
use crate::metrics::{self, OpContext, SessionInfo, Transfer};
use crate::path::VPath;
use crate::perms::{Perm, Permissions, SharedPermissions};
use crate::transfer::{FileReader, FileWriter, OpenMode};
use crate::writing::Writing;
use futures::StreamExt;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// A backend with the key prefix that a part of the tree maps to.
#[derive(Clone)]
pub struct Area {
    /// Where the bytes are.
    pub backend: Arc<dyn Backend>,
    /// Key prefix: `""` or ending in `/`.
    pub prefix: String,
}

/// A folder of the tree that shows a remote's bucket prefix.
#[derive(Clone)]
pub struct Mount {
    /// The mount point in the site tree.
    pub path: VPath,
    /// The remote and prefix it shows.
    pub area: Area,
}

/// The whole site tree: its own storage plus the mounts. Shared by every session.
pub struct Tree {
    site: Area,
    /// Longest mount point first, so the first match is the longest.
    mounts: Vec<Mount>,
    started: SystemTime,
    /// The names being written right now, by every session.
    writing: Arc<Writing>,
}

/// Where a tree path lives.
#[derive(Clone)]
pub struct Location {
    /// The backend holding it.
    pub backend: Arc<dyn Backend>,
    /// Its key in that backend (a folder without trailing slash; `""` for a bucket root).
    pub key: String,
    /// True when the path is the root of the site tree or a mount point (never renamed or
    /// removed).
    pub is_area_root: bool,
    /// Index of the mount (`None` for the site tree), to tell backends apart.
    pub mount: Option<usize>,
}

impl Tree {
    /// A tree over `site` with `mounts`.
    pub fn new(site: Area, mut mounts: Vec<Mount>) -> Self {
        mounts.sort_by_key(|m| std::cmp::Reverse(m.path.segments().count()));
        Tree {
            site,
            mounts,
            started: SystemTime::now(),
            writing: Arc::default(),
        }
    }

    /// How many names have an upload in progress, in every session (tests wait for 0 to
    /// know that the uploads of sessions that ended have been given up).
    pub fn uploads_in_progress(&self) -> usize {
        self.writing.names()
    }

    /// Shares `writing`, the record of the names being written, with this tree (a reload
    /// builds a new tree while the sessions of the old one still write).
    pub fn with_writing(mut self, writing: Arc<Writing>) -> Self {
        self.writing = writing;
        self
    }

    /// The name of an area in the record of names being written: the mount point, which a
    /// reload keeps, or `""` for the site tree.
    fn area_name(&self, mount: Option<usize>) -> String {
        mount
            .and_then(|i| self.mounts.get(i))
            .map(|m| m.path.to_string())
            .unwrap_or_default()
    }

    /// The site area.
    pub fn site(&self) -> &Area {
        &self.site
    }

    /// The mounts, longest mount point first.
    pub fn mounts(&self) -> &[Mount] {
        &self.mounts
    }

    /// Resolves a site-tree path to its backend and key.
    pub fn locate(&self, path: &VPath) -> Location {
        for (i, m) in self.mounts.iter().enumerate() {
            if let Some(rel) = path.strip_prefix(&m.path) {
                return Location {
                    backend: m.area.backend.clone(),
                    key: key_of(&m.area.prefix, rel),
                    is_area_root: rel.is_empty(),
                    mount: Some(i),
                };
            }
        }
        let rel = path.strip_prefix(&VPath::root()).unwrap_or("");
        Location {
            backend: self.site.backend.clone(),
            key: key_of(&self.site.prefix, rel),
            is_area_root: rel.is_empty(),
            mount: None,
        }
    }

    /// True when some mount point lies strictly below `path` (so `path` is a folder that
    /// must exist in every listing, and cannot be removed or renamed).
    fn holds_mount(&self, path: &VPath) -> bool {
        self.mounts
            .iter()
            .any(|m| m.path != *path && m.path.starts_with(path))
    }

    /// Names of the folders that lead from `dir` towards mount points below it.
    fn virtual_children(&self, dir: &VPath) -> Vec<String> {
        let mut names: Vec<String> = self
            .mounts
            .iter()
            .filter(|m| m.path != *dir)
            .filter_map(|m| m.path.strip_prefix(dir))
            .filter_map(|rel| rel.split('/').next().map(str::to_string))
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

/// The folder that will hold a new entry must exist and be a folder.
fn require_folder(parent: Result<Entry>, op: &'static str, shown: &VPath) -> Result<()> {
    match parent {
        Ok(d) if d.is_dir() => Ok(()),
        Ok(_) => Err(Error::of(ErrorKind::NotADirectory).with_context(op, shown.to_string())),
        Err(e) => Err(e.with_context(op, shown.to_string())),
    }
}

/// A lookup that takes less than this is not worth a listing of up to 1,000 names to spare the
/// next ones (on loopback or a LAN the listing costs the server more than it saves).
const WORTH_LISTING: std::time::Duration = std::time::Duration::from_millis(10);

/// Runs `lookup` while the folder's `listing` (if one was begun) runs beside it, and then
/// waits for the listing at most as long again as the lookup took: it usually ends with the
/// lookup (both are one request), so that the next lookup finds it; a large folder's listing
/// that takes longer goes on on its own, and the lookup's answer is not held up much.
async fn beside<T>(
    listing: Option<tokio::task::JoinHandle<()>>,
    lookup: impl std::future::Future<Output = T>,
) -> T {
    let started = std::time::Instant::now();
    let r = lookup.await;
    if let Some(l) = listing {
        let _ = tokio::time::timeout(started.elapsed(), l).await;
    }
    r
}

/// Where a listing of a lookup's folder is kept and made (see `UserFs::listing_scope`).
struct ListingScope {
    /// The folder's site path.
    folder: String,
    /// The name looked up in it.
    name: String,
    backend: Arc<dyn Backend>,
    key: String,
    stamp: (u64, u64),
}

fn key_of(prefix: &str, rel: &str) -> String {
    let mut k = String::with_capacity(prefix.len() + rel.len());
    k.push_str(prefix);
    k.push_str(rel);
    while k.ends_with('/') {
        k.pop();
    }
    k
}

/// One user's view: her home is `/`, her permissions apply, and nothing outside is reachable.
#[derive(Clone)]
pub struct UserFs {
    tree: Arc<Tree>,
    home: VPath,
    perms: Arc<SharedPermissions>,
    username: String,
    session: Option<SessionInfo>,
    /// What this session found a moment ago (shared by the view's clones).
    known: Arc<Known>,
    /// Its transfers in progress (shared by the view's clones).
    activity: Arc<metrics::Activity>,
}

impl UserFs {
    /// The view of `username`, rooted at `home` (a site-tree path).
    pub fn new(tree: Arc<Tree>, username: &str, home: VPath, perms: Permissions) -> Self {
        UserFs {
            tree,
            home,
            perms: Arc::new(SharedPermissions::new(perms)),
            username: username.to_string(),
            session: None,
            known: Arc::default(),
            activity: Arc::default(),
        }
    }

    /// The same view, tagged with the session that uses it (protocol and client address), for
    /// the audit log and the metrics.
    pub fn with_session(mut self, info: SessionInfo) -> Self {
        self.session = Some(info);
        self
    }

    /// Replaces the permissions of this view and of every clone of it (a config reload that
    /// changed the user's rules): they apply from each clone's next operation.
    pub fn set_permissions(&self, perms: Permissions) {
        self.perms.replace(perms);
    }

    /// The session this view belongs to, when a frontend set it.
    pub fn session(&self) -> Option<SessionInfo> {
        self.session
    }

    /// The transfers in progress through this view and its clones, and their bytes.
    pub fn activity(&self) -> Arc<metrics::Activity> {
        self.activity.clone()
    }

    fn op_ctx(&self) -> OpContext {
        OpContext {
            user: self.username.clone(),
            session: self.session,
            activity: Some(self.activity.clone()),
        }
    }

    /// Runs one operation and records it (counter and audit line).
    async fn audited<T>(
        &self,
        op: &'static str,
        path: String,
        fut: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let t0 = Instant::now();
        let r = fut.await;
        metrics::file_op(
            &self.op_ctx(),
            op,
            &path,
            0,
            t0.elapsed(),
            &metrics::result_of(&r),
            metrics::error_of(&r).as_deref(),
        );
        r
    }

    /// Describes the folder that will hold a new entry. Mount points and the folders above
    /// them always exist, so a file created at a mount's root (the common upload) costs no
    /// request for its parent; so does the user's home (made at login, kept by its marker),
    /// and a folder this session saw a moment ago (see [`crate::known`]).
    async fn stat_parent(&self, site: &VPath) -> Result<Entry> {
        let loc = self.tree.locate(site);
        if loc.is_area_root
            || self.tree.holds_mount(site)
            || *site == self.home
            || self
                .known
                .is_folder(&site.to_string(), self.tree.writing.removals())
        {
            return Ok(Entry {
                name: site.name().unwrap_or("/").to_string(),
                kind: EntryKind::Dir,
                size: 0,
                mtime: Some(self.tree.started),
                etag: None,
            });
        }
        self.stat_site(site).await
    }

    /// Describes a file or folder. Needs `list` in the folder that holds it (in the folder
    /// itself for the home).
    pub async fn stat(&self, p: &VPath) -> Result<Entry> {
        self.audited("stat", p.to_string(), self.stat_inner(p))
            .await
    }

    /// Lists a folder, one page at a time (recorded when the listing starts).
    pub async fn list(&self, p: &VPath) -> Result<ListStream> {
        self.audited("list", p.to_string(), self.list_inner(p))
            .await
    }

    /// Opens a file for reading. Needs `download` in its folder. The audit line is written
    /// when the reader is dropped, with the bytes read.
    pub async fn open_read(&self, p: &VPath) -> Result<FileReader> {
        let t0 = Instant::now();
        match self.open_read_inner(p).await {
            Ok(r) => Ok(r.with_audit(Transfer::new(self.op_ctx(), "open_read", p.to_string(), t0))),
            Err(e) => {
                let r = Err(e);
                metrics::file_op(
                    &self.op_ctx(),
                    "open_read",
                    &p.to_string(),
                    0,
                    t0.elapsed(),
                    &metrics::result_of(&r),
                    metrics::error_of(&r).as_deref(),
                );
                r
            }
        }
    }

    /// Opens a file for writing (see `open_write_inner` for the rules). The audit line is
    /// written at close or abort, with the bytes received.
    pub async fn open_write(&self, p: &VPath, mode: OpenMode) -> Result<FileWriter> {
        let t0 = Instant::now();
        match self.open_write_inner(p, mode).await {
            Ok(w) => Ok(w.with_audit(Transfer::new(
                self.op_ctx(),
                "open_write",
                p.to_string(),
                t0,
            ))),
            Err(e) => {
                let r = Err(e);
                metrics::file_op(
                    &self.op_ctx(),
                    "open_write",
                    &p.to_string(),
                    0,
                    t0.elapsed(),
                    &metrics::result_of(&r),
                    metrics::error_of(&r).as_deref(),
                );
                r
            }
        }
    }

    /// Creates a folder. Needs `mkdir` in the folder that will hold it.
    pub async fn mkdir(&self, p: &VPath) -> Result<()> {
        self.audited("mkdir", p.to_string(), self.mkdir_inner(p))
            .await
    }

    /// Removes an empty folder. Needs `delete` in the folder that holds it.
    pub async fn rmdir(&self, p: &VPath) -> Result<()> {
        self.audited("rmdir", p.to_string(), self.rmdir_inner(p))
            .await
    }

    /// Removes a file. Needs `delete` in its folder.
    pub async fn remove(&self, p: &VPath) -> Result<()> {
        self.audited("remove", p.to_string(), self.remove_inner(p))
            .await
    }

    /// Renames a file or folder. Needs `rename` at the source's folder, `upload` at the
    /// target's, and `overwrite` there when the target exists (only with `replace`).
    pub async fn rename(&self, from: &VPath, to: &VPath, replace: bool) -> Result<()> {
        self.audited(
            "rename",
            format!("{from} -> {to}"),
            self.rename_inner(from, to, replace),
        )
        .await
    }

    /// True when an upload of `p` is in progress in this process (any session): a disk would
    /// show the file from its open, the bucket only from its CLOSE.
    pub fn is_being_written(&self, p: &VPath) -> bool {
        let loc = self.tree.locate(&self.site_path(p));
        self.tree
            .writing
            .is_writing(&self.tree.area_name(loc.mount), &loc.key)
    }

    /// Empties a file, as `truncate -s 0` does: the object is replaced by an empty one (needs
    /// `overwrite`), and an upload of the name in progress will not commit over it: its CLOSE
    /// fails, as after a remove (on a disk its bytes would be cut too).
    pub async fn truncate(&self, p: &VPath) -> Result<()> {
        let mode = OpenMode {
            truncate: true,
            ..Default::default()
        };
        let w = self.open_write(p, mode).await?;
        self.commit_replacing(p, w).await
    }

    /// Commits `w`, which rewrites `p` as a whole, then discards the uploads of the name in
    /// progress in other sessions: they will not commit over it.
    async fn commit_replacing(&self, p: &VPath, w: FileWriter) -> Result<()> {
        w.close().await?;
        let loc = self.tree.locate(&self.site_path(p));
        self.tree
            .writing
            .discard(&self.tree.area_name(loc.mount), &loc.key);
        Ok(())
    }

    /// Sets a file's length, as `truncate -s SIZE` does: the bytes past `size` go, a shorter
    /// file is extended with zeros. The object is replaced by one of the new length (cutting
    /// needs `overwrite`, extending `upload`); as for [`UserFs::truncate`], an upload of the
    /// name in progress will not commit over it. A missing file is not created.
    pub async fn set_len(&self, p: &VPath, size: u64) -> Result<()> {
        if size == 0 {
            return self.truncate(p).await;
        }
        let mut w = self.open_write(p, OpenMode::default()).await?;
        if !w.set_len(size) {
            // Nothing was written yet: only a writer with bytes in flight refuses.
            w.abort().await;
            return Err(Error::of(ErrorKind::Unsupported).with_context("setstat", p.to_string()));
        }
        self.commit_replacing(p, w).await
    }

    /// Records a client-set modification time. Needs `overwrite` in the file's folder.
    pub async fn set_mtime(&self, p: &VPath, mtime: SystemTime) -> Result<()> {
        self.audited("setstat", p.to_string(), self.set_mtime_inner(p, mtime))
            .await
    }

    /// The user this view belongs to.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The user's home in the site tree.
    pub fn home(&self) -> &VPath {
        &self.home
    }

    /// Normalises client input against the current folder (both user-view paths).
    pub fn resolve(&self, cwd: &VPath, input: &str) -> Result<VPath> {
        VPath::resolve(cwd, input)
    }

    /// [`UserFs::resolve`] for an operation on a name that may be a file (open, remove,
    /// rename, stat, a transfer): a name that ends in a separator (`name/`, `name/.`) names a
    /// folder only, as on a disk, where open(2), unlink(2), rename(2) and stat(2) of `name/`
    /// fail unless `name` is a folder. Such a name that is not a folder is refused here: an
    /// upload to `newdir/` (`scp f host:newdir/`) made a file named `newdir`, and the next
    /// upload there replaced it.
    pub async fn resolve_entry(&self, cwd: &VPath, input: &str) -> Result<VPath> {
        let p = VPath::resolve(cwd, input)?;
        if p.is_root() || !crate::path::names_a_folder(input) {
            return Ok(p);
        }
        match self.stat_inner(&p).await {
            Ok(e) if e.is_dir() => Ok(p),
            Ok(_) => Err(Error::new(
                ErrorKind::NotADirectory,
                "not a folder (the name ends in /)",
            )
            .with_context("open", p.to_string())),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(Error::new(
                ErrorKind::NotFound,
                "no such folder (the name ends in /)",
            )
            .with_context("open", p.to_string())),
            Err(e) => Err(e.with_context("open", p.to_string())),
        }
    }

    /// Creates the home folder (and the folders above it) when missing, so that it never
    /// vanishes when its last file goes (a marker on object storage).
    pub async fn ensure_home(&self) -> Result<()> {
        let mut cur = VPath::root();
        for seg in self.home.segments() {
            cur = cur.join(seg)?;
            let loc = self.tree.locate(&cur);
            if loc.is_area_root || self.tree.holds_mount(&cur) {
                continue;
            }
            match loc.backend.stat(&loc.key).await {
                Ok(e) if e.is_dir() => {}
                Ok(_) => {
                    return Err(
                        Error::of(ErrorKind::NotADirectory).with_context("home", cur.to_string())
                    )
                }
                Err(e) if e.kind() == ErrorKind::NotFound => loc.backend.mkdir(&loc.key).await?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn site_path(&self, p: &VPath) -> VPath {
        p.rebase(&self.home)
    }

    fn check(&self, op: &'static str, dir: &VPath, perm: Perm, shown: &VPath) -> Result<()> {
        if self.perms.at(dir).has(perm) {
            Ok(())
        } else {
            Err(Error::of(ErrorKind::PermissionDenied).with_context(op, shown.to_string()))
        }
    }

    /// Stat without a permission check, in site-tree terms.
    async fn stat_site(&self, site: &VPath) -> Result<Entry> {
        let loc = self.tree.locate(site);
        let name = site.name().unwrap_or("/").to_string();
        if loc.is_area_root || self.tree.holds_mount(site) {
            // Mount points and the folders above them always exist, and show the tree's start
            // time, as listings show them: no request (a `cd` into a mount costs nothing).
            return Ok(Entry {
                name,
                kind: EntryKind::Dir,
                size: 0,
                mtime: Some(self.tree.started),
                etag: None,
            });
        }
        let e = loc.backend.stat(&loc.key).await?;
        Ok(self.as_shown(e, name))
    }

    /// A backend's entry as the session shows it: by its name in the tree, and with the tree's
    /// start time where the backend has none (folders).
    fn as_shown(&self, mut e: Entry, name: String) -> Entry {
        e.name = name;
        if e.mtime.is_none() {
            e.mtime = Some(self.tree.started);
        }
        e
    }

    /// [`UserFs::stat_site`] for a client's stat: where `site` is a folder whose listing's first
    /// page the same request brought (S3), that listing is kept for a moment, for the listing
    /// a client mostly asks for next (see [`Known::park`]).
    async fn stat_site_keeping_listing(&self, site: &VPath) -> Result<Entry> {
        let loc = self.tree.locate(site);
        if loc.is_area_root || self.tree.holds_mount(site) {
            return self.stat_site(site).await;
        }
        let stamp = self.tree.writing.folder_stamp(&loc.key);
        let (e, pages) = loc.backend.stat_listing(&loc.key).await?;
        if let Some(pages) = pages.filter(|_| e.is_dir()) {
            self.known.park(&site.to_string(), pages, stamp);
            // Its memory goes back once it can no longer be used, whether or not a listing
            // came: a client that stats a large folder and then waits holds nothing.
            let known = self.known.clone();
            tokio::spawn(async move {
                tokio::time::sleep(crate::known::NAME_FOR).await;
                known.drop_stale_parked();
            });
        }
        Ok(self.as_shown(e, site.name().unwrap_or("/").to_string()))
    }

    /// The folder holding `site`, where a listing of it can tell that `site` does not exist:
    /// the folder's site path, backend, key and stamp now. None for area roots and the folders
    /// that lead to mount points (they always exist).
    fn listing_scope(&self, site: &VPath) -> Option<ListingScope> {
        let loc = self.tree.locate(site);
        if loc.is_area_root || self.tree.holds_mount(site) {
            return None;
        }
        let parent = site.parent();
        let ploc = self.tree.locate(&parent);
        if ploc.mount != loc.mount {
            return None;
        }
        let stamp = self.tree.writing.folder_stamp(&ploc.key);
        Some(ListingScope {
            folder: parent.to_string(),
            name: site.name().unwrap_or_default().to_string(),
            backend: ploc.backend,
            key: ploc.key,
            stamp,
        })
    }

    /// When a listing of `site`'s folder made a moment ago found no such name, and nothing
    /// changed the folder since: the name is missing, and no request is needed to say so.
    fn listed_missing(&self, scope: Option<&ListingScope>) -> Option<std::time::Instant> {
        let s = scope?;
        self.known.listed_absent(&s.folder, &s.name, s.stamp)
    }

    /// Lists the folder of a lookup, beside it, where a name was found missing in it a moment
    /// ago and no usable listing tells about this one: the next lookups of names in it (an
    /// upload client's STAT of each new file) then need no request. One listing request (a
    /// page: in a larger folder, the names after this one), in a task of its own: see
    /// [`beside`].
    fn list_alongside(&self, scope: Option<&ListingScope>) -> Option<tokio::task::JoinHandle<()>> {
        let s = scope?;
        let after = self.known.wants_listing(&s.folder, &s.name, s.stamp)?;
        let removals = self.tree.writing.removals();
        let known = self.known.clone();
        let (backend, key, folder, stamp) =
            (s.backend.clone(), s.key.clone(), s.folder.clone(), s.stamp);
        Some(tokio::spawn(async move {
            match backend.child_names(&key, &after).await {
                Ok(names) => {
                    if names.as_ref().is_some_and(|n| !n.names.is_empty()) {
                        known.folder(&folder, removals);
                    }
                    known.listed(&folder, names, stamp);
                }
                Err(e) => {
                    known.listing_failed(&folder);
                    tracing::debug!(folder = %folder, error = %e, "listing for lookups failed");
                }
            }
        }))
    }

    /// Describes a file or folder. Needs `list` in the folder that holds it (in the folder
    /// itself for the home).
    async fn stat_inner(&self, p: &VPath) -> Result<Entry> {
        self.check("stat", &p.parent(), Perm::List, p)?;
        let site = self.site_path(p);
        let changes = self.tree.writing.changes();
        let removals = self.tree.writing.removals();
        let scope = self.listing_scope(&site);
        if let Some(at) = self.listed_missing(scope.as_ref()) {
            self.known.absent_since(&site.to_string(), changes, at);
            self.known.missed(&site.parent().to_string(), true);
            return Err(Error::of(ErrorKind::NotFound).with_context("stat", p.to_string()));
        }
        let started = std::time::Instant::now();
        let r = beside(
            self.list_alongside(scope.as_ref()),
            self.stat_site_keeping_listing(&site),
        )
        .await;
        let slow = started.elapsed() >= WORTH_LISTING;
        match &r {
            Ok(e) if e.is_dir() => self.known.folder(&site.to_string(), removals),
            Ok(_) => self.known.folder(&site.parent().to_string(), removals),
            // An upload client's check before it writes: the OPEN that follows may reuse it,
            // and the next lookup in the folder lists it.
            Err(e) if e.kind() == ErrorKind::NotFound => {
                self.known.absent(&site.to_string(), changes);
                self.known.missed(&site.parent().to_string(), slow);
            }
            Err(_) => {}
        }
        r.map_err(|e| e.with_context("stat", p.to_string()))
    }

    /// Lists a folder, one page at a time. Folders leading to mount points are shown even when
    /// the site tree has no such folder; folders without a time get the tree's start time.
    async fn list_inner(&self, p: &VPath) -> Result<ListStream> {
        self.check("list", p, Perm::List, p)?;
        let site = self.site_path(p);
        let loc = self.tree.locate(&site);
        let removals = self.tree.writing.removals();
        // The client's stat of the folder a moment ago may have brought the first page.
        let stamp = self.tree.writing.folder_stamp(&loc.key);
        let mut pages = self
            .known
            .take_parked(&site.to_string(), stamp)
            .unwrap_or_else(|| loc.backend.list(&loc.key));
        // A folder that lists something exists: only an empty or failing first page needs the
        // stat that tells an empty folder from a missing one or a file. That saves a request
        // per listing, and on servers whose every listing walks the folder, a whole walk.
        let fixed = loc.is_area_root || self.tree.holds_mount(&site);
        let first_page = if fixed { None } else { pages.next().await };
        let first_page = match first_page {
            Some(Ok(page)) if !page.is_empty() => Some(page),
            None if fixed => None,
            other => {
                let e = self
                    .stat_site(&site)
                    .await
                    .map_err(|e| e.with_context("list", p.to_string()))?;
                if !e.is_dir() {
                    return Err(
                        Error::of(ErrorKind::NotADirectory).with_context("list", p.to_string())
                    );
                }
                match other {
                    Some(Err(e)) => return Err(e.with_context("list", p.to_string())),
                    _ => None,
                }
            }
        };
        // It lists something, or its stat said folder: it exists.
        self.known.folder(&site.to_string(), removals);
        let pages = futures::stream::iter(first_page.map(Ok)).chain(pages);
        let virt = self.tree.virtual_children(&site);
        let started = self.tree.started;
        // Children that are mount points come from the mount, not from this backend.
        let virt_for_filter = virt.clone();
        let inner = pages.map(move |page| {
            page.map(|entries| {
                entries
                    .into_iter()
                    .filter(|e| !virt_for_filter.contains(&e.name))
                    .map(|mut e| {
                        if e.mtime.is_none() {
                            e.mtime = Some(started);
                        }
                        e
                    })
                    .collect::<Vec<_>>()
            })
        });
        let first: Vec<Entry> = virt
            .into_iter()
            .map(|n| {
                let mut d = Entry::dir(n);
                d.mtime = Some(started);
                d
            })
            .collect();
        let head = futures::stream::iter(if first.is_empty() {
            None
        } else {
            Some(Ok(first))
        });
        Ok(Box::pin(head.chain(inner)))
    }

    /// Opens a file for reading. Needs `download` in its folder.
    async fn open_read_inner(&self, p: &VPath) -> Result<FileReader> {
        self.check("open", &p.parent(), Perm::Download, p)?;
        let site = self.site_path(p);
        let e = self
            .stat_site(&site)
            .await
            .map_err(|e| e.with_context("open", p.to_string()))?;
        if e.is_dir() {
            return Err(Error::of(ErrorKind::IsADirectory).with_context("open", p.to_string()));
        }
        let loc = self.tree.locate(&site);
        Ok(FileReader::new(loc.backend, loc.key, e, p.clone()))
    }

    /// Opens a file for writing. Needs `upload` for a new file or an append, `overwrite` to
    /// replace an existing one; the parent folder must exist.
    async fn open_write_inner(&self, p: &VPath, mode: OpenMode) -> Result<FileWriter> {
        let op = "open";
        if p.is_root() {
            return Err(Error::of(ErrorKind::IsADirectory).with_context(op, p.to_string()));
        }
        let removals = self.tree.writing.removals();
        let perms = self.perms.at(&p.parent());
        if !perms.has(Perm::Upload) && !perms.has(Perm::Overwrite) {
            return Err(Error::of(ErrorKind::PermissionDenied).with_context(op, p.to_string()));
        }
        let site = self.site_path(p);
        let loc = self.tree.locate(&site);
        if loc.is_area_root || self.tree.holds_mount(&site) {
            return Err(Error::of(ErrorKind::IsADirectory).with_context(op, p.to_string()));
        }
        let parent = site.parent();
        // A name this session found missing a moment ago (the client's STAT just before) is
        // not asked again where that cannot change the outcome: with TRUNC the old content is
        // not used, and a create that must not replace commits only if the name is still free.
        let scope = self.listing_scope(&site);
        let replaces = mode.truncate || mode.exclusive;
        let listed = replaces && self.listed_missing(scope.as_ref()).is_some();
        let reuse = listed
            || (replaces
                && self
                    .known
                    .take_absent(&site.to_string(), self.tree.writing.changes()));
        let started = std::time::Instant::now();
        let (target, parent_e) = if reuse {
            (
                Err(Error::of(ErrorKind::NotFound)),
                self.stat_parent(&parent).await,
            )
        } else {
            // An FTP STOR asks nothing before it: after a STOR of a new name, the folder's
            // listing, made beside the next one's lookup, spares the STORs after it theirs.
            let listing = replaces
                .then(|| self.list_alongside(scope.as_ref()))
                .flatten();
            let lookups = async { tokio::join!(self.stat_site(&site), self.stat_parent(&parent)) };
            beside(listing, lookups).await
        };
        let slow = listed || started.elapsed() >= WORTH_LISTING;
        require_folder(parent_e, op, p)?;
        let existing = match target {
            Ok(e) if e.is_dir() => {
                return Err(Error::of(ErrorKind::IsADirectory).with_context(op, p.to_string()))
            }
            Ok(e) => Some(e),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                // A new name (an FTP STOR's): the next open in the folder lists it.
                self.known.missed(&parent.to_string(), slow);
                None
            }
            Err(e) => return Err(e.with_context(op, p.to_string())),
        };
        let writing = self
            .tree
            .writing
            .is_writing(&self.tree.area_name(loc.mount), &loc.key);
        if (existing.is_some() || writing) && mode.exclusive {
            return Err(Error::of(ErrorKind::AlreadyExists).with_context(op, p.to_string()));
        }
        if existing.is_none() && writing && !perms.has(Perm::Overwrite) {
            // Another session is creating this name: to a user who may not replace files, it
            // exists already.
            return Err(
                Error::new(ErrorKind::AlreadyExists, "the file is being written")
                    .with_context(op, p.to_string()),
            );
        }
        if existing.is_none() && !mode.create {
            return Err(Error::of(ErrorKind::NotFound).with_context(op, p.to_string()));
        }
        match (&existing, mode.truncate, mode.append) {
            (None, _, _) => self.check(op, &p.parent(), Perm::Upload, p)?,
            (Some(_), _, true) => self.check(op, &p.parent(), Perm::Upload, p)?,
            (Some(_), true, false) => self.check(op, &p.parent(), Perm::Overwrite, p)?,
            // Replace or append is decided by the first write's offset; each is checked then.
            (Some(_), false, false) => {}
        }
        let claim = self
            .tree
            .writing
            .claim(&self.tree.area_name(loc.mount), &loc.key);
        Ok(
            FileWriter::new(loc.backend, loc.key, existing, mode, perms, p.clone())
                .with_claim(claim)
                .with_known(
                    self.known.clone(),
                    site.to_string(),
                    parent.to_string(),
                    removals,
                ),
        )
    }

    /// Creates a folder. Needs `mkdir` in the folder that will hold it.
    async fn mkdir_inner(&self, p: &VPath) -> Result<()> {
        let op = "mkdir";
        let _change = self.tree.writing.change();
        let removals = self.tree.writing.removals();
        self.check(op, &p.parent(), Perm::Mkdir, p)?;
        let site = self.site_path(p);
        let loc = self.tree.locate(&site);
        if loc.is_area_root || self.tree.holds_mount(&site) || p.is_root() {
            return Err(Error::of(ErrorKind::AlreadyExists).with_context(op, p.to_string()));
        }
        if self
            .tree
            .writing
            .is_writing(&self.tree.area_name(loc.mount), &loc.key)
        {
            // A file being written exists, as on a disk, though the bucket has no object yet.
            return Err(Error::of(ErrorKind::AlreadyExists).with_context(op, p.to_string()));
        }
        let parent_path = site.parent();
        let (target, parent) = tokio::join!(self.stat_site(&site), self.stat_parent(&parent_path));
        require_folder(parent, op, p)?;
        match target {
            Ok(_) => Err(Error::of(ErrorKind::AlreadyExists).with_context(op, p.to_string())),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                loc.backend
                    .mkdir(&loc.key)
                    .await
                    .map_err(|e| e.with_context(op, p.to_string()))?;
                self.known.folder(&site.to_string(), removals);
                Ok(())
            }
            Err(e) => Err(e.with_context(op, p.to_string())),
        }
    }

    fn refuse_fixed(&self, op: &'static str, p: &VPath) -> Result<Location> {
        let site = self.site_path(p);
        let loc = self.tree.locate(&site);
        if p.is_root() || loc.is_area_root || self.tree.holds_mount(&site) {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                "the home folder and mount points cannot be removed or renamed",
            )
            .with_context(op, p.to_string()));
        }
        Ok(loc)
    }

    /// Removes an empty folder. Needs `delete` in the folder that holds it.
    async fn rmdir_inner(&self, p: &VPath) -> Result<()> {
        let op = "rmdir";
        let _change = self.tree.writing.removal();
        self.check(op, &p.parent(), Perm::Delete, p)?;
        self.known.forget(&self.site_path(p).to_string());
        let loc = self.refuse_fixed(op, p)?;
        let e = self
            .stat_site(&self.site_path(p))
            .await
            .map_err(|e| e.with_context(op, p.to_string()))?;
        if !e.is_dir() {
            return Err(Error::of(ErrorKind::NotADirectory).with_context(op, p.to_string()));
        }
        if self
            .tree
            .writing
            .any_below(&self.tree.area_name(loc.mount), &loc.key)
        {
            // Uploads in progress are not listed, so say why a folder that looks empty is not.
            return Err(Error::new(
                ErrorKind::DirectoryNotEmpty,
                "folder not empty: a file in it is still being uploaded",
            )
            .with_context(op, p.to_string()));
        }
        loc.backend
            .remove_dir(&loc.key)
            .await
            .map_err(|e| e.with_context(op, p.to_string()))
    }

    /// Removes a file. Needs `delete` in its folder.
    async fn remove_inner(&self, p: &VPath) -> Result<()> {
        let op = "remove";
        let _change = self.tree.writing.removal();
        self.check(op, &p.parent(), Perm::Delete, p)?;
        // On object storage a folder without a marker goes with its last file.
        let site = self.site_path(p);
        self.known.forget(&site.to_string());
        self.known.forget(&site.parent().to_string());
        let loc = self.refuse_fixed(op, p)?;
        let writing = self
            .tree
            .writing
            .is_writing(&self.tree.area_name(loc.mount), &loc.key);
        let e = match self.stat_site(&self.site_path(p)).await {
            // A new file being written is removed as on a disk: its upload will not commit.
            Err(e) if e.kind() == ErrorKind::NotFound && writing => {
                self.tree
                    .writing
                    .discard(&self.tree.area_name(loc.mount), &loc.key);
                return Ok(());
            }
            r => r.map_err(|e| e.with_context(op, p.to_string()))?,
        };
        if e.is_dir() {
            return Err(Error::of(ErrorKind::IsADirectory).with_context(op, p.to_string()));
        }
        if writing {
            self.tree
                .writing
                .discard(&self.tree.area_name(loc.mount), &loc.key);
        }
        loc.backend
            .remove_file(&loc.key)
            .await
            .map_err(|e| e.with_context(op, p.to_string()))
    }

    /// Renames a file or folder. Needs `rename` at the source's folder, `upload` at the
    /// target's, and `overwrite` there when the target exists (only with `replace`).
    async fn rename_inner(&self, from: &VPath, to: &VPath, replace: bool) -> Result<()> {
        let op = "rename";
        let _change = self.tree.writing.removal();
        self.check(op, &from.parent(), Perm::Rename, from)?;
        self.check(op, &to.parent(), Perm::Upload, to)?;
        let src = self.refuse_fixed(op, from)?;
        let dst = self.refuse_fixed(op, to)?;
        self.known.forget(&self.site_path(from).to_string());
        self.known.forget(&self.site_path(to).to_string());
        if self
            .tree
            .writing
            .is_writing(&self.tree.area_name(src.mount), &src.key)
            || self
                .tree
                .writing
                .any_below(&self.tree.area_name(src.mount), &src.key)
        {
            return Err(Error::new(
                ErrorKind::Conflict,
                "the file is being written; rename it once its upload is complete",
            )
            .with_context(op, from.to_string()));
        }
        if from == to {
            // Renaming a name onto itself changes nothing, but the name must exist.
            self.stat_site(&self.site_path(from))
                .await
                .map_err(|e| e.with_context(op, from.to_string()))?;
            return Ok(());
        }
        if to.starts_with(from) {
            return Err(
                Error::new(ErrorKind::InvalidInput, "cannot move a folder into itself")
                    .with_context(op, from.to_string()),
            );
        }
        let (s_site, d_site) = (self.site_path(from), self.site_path(to));
        let d_parent = d_site.parent();
        let (se, de, dp) = tokio::join!(
            self.stat_site(&s_site),
            self.stat_site(&d_site),
            self.stat_parent(&d_parent)
        );
        let se = se.map_err(|e| e.with_context(op, from.to_string()))?;
        require_folder(dp, op, to)?;
        let dst_writing = self
            .tree
            .writing
            .is_writing(&self.tree.area_name(dst.mount), &dst.key);
        // A file being written at the target exists, as on a disk.
        let de = match de {
            Err(e) if e.kind() == ErrorKind::NotFound && dst_writing => Ok(Entry {
                name: to.name().unwrap_or("/").to_string(),
                kind: EntryKind::File,
                size: 0,
                mtime: None,
                etag: None,
            }),
            other => other,
        };
        match de {
            Ok(d) => {
                if !replace || d.is_dir() || se.is_dir() {
                    return Err(
                        Error::of(ErrorKind::AlreadyExists).with_context(op, to.to_string())
                    );
                }
                self.check(op, &to.parent(), Perm::Overwrite, to)?;
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e.with_context(op, to.to_string())),
        }
        if dst_writing {
            // Replaced: the uploads in progress on the target must not bring their version back.
            self.tree
                .writing
                .discard(&self.tree.area_name(dst.mount), &dst.key);
        }
        let same_backend = src.mount == dst.mount;
        let r = if se.is_dir() {
            if !same_backend {
                Err(Error::new(
                    ErrorKind::Unsupported,
                    "folders cannot be moved between the site tree and a mount, or between mounts",
                ))
            } else {
                src.backend.rename_dir(&src.key, &dst.key).await
            }
        } else if same_backend {
            src.backend.rename_file(&src.key, &dst.key).await
        } else {
            crate::transfer::stream_copy(
                &src.backend,
                &src.key,
                &dst.backend,
                &dst.key,
                se.size,
                se.mtime,
            )
            .await?;
            src.backend
                .remove_file(&src.key)
                .await
                .map_err(crate::backend::under_both_names)
        };
        r.map_err(|e| e.with_context(op, from.to_string()))
    }

    /// Records a client-set modification time. Needs `overwrite` in the file's folder.
    /// Folders accept and ignore it (object storage has no folder times).
    async fn set_mtime_inner(&self, p: &VPath, mtime: SystemTime) -> Result<()> {
        let op = "setstat";
        self.check(op, &p.parent(), Perm::Overwrite, p)?;
        let site = self.site_path(p);
        // A file this session committed a moment ago (FTP clients send MFMT right after STOR)
        // is a file: no stat.
        if !self.known.just_written(&site.to_string()) {
            let e = self
                .stat_site(&site)
                .await
                .map_err(|e| e.with_context(op, p.to_string()))?;
            if e.is_dir() {
                return Ok(());
            }
        }
        let loc = self.tree.locate(&site);
        loc.backend
            .set_mtime(&loc.key, mtime)
            .await
            .map_err(|e| e.with_context(op, p.to_string()))
    }
}
