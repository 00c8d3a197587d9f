//! The state of one decoding session and the JSON it writes for each change.
//!
//! Each callback builds one complete JSON object in `Decoder::out` (a reused
//! buffer) and hands it to the walsender in one write. Work that allocates in
//! PostgreSQL memory happens in a per-change memory context that is reset
//! after every change, so a long transaction does not accumulate garbage.

use crate::relation::{RelCache, RelInfo};
use crate::tuple::{self, Deformed, Which};
use pgrx::pg_sys;
use walcast_abi::Action;
use walcast_format::{json, timestamp, Lsn, Options, Position};

/// The prefix of the logical messages written by walcast's DDL event trigger.
pub const DDL_PREFIX: &str = "walcast.ddl";
/// Buffers larger than this after a change are released instead of kept.
const KEEP_BUFFER_BYTES: usize = 1 << 20;
/// Separates the objects of one message with `batch-bytes` (ASCII RS, as in
/// RFC 7464 JSON text sequences). It never occurs in walcast's JSON: strings
/// escape control characters and `json` values may hold only JSON whitespace.
pub const RECORD_SEPARATOR: u8 = 0x1E;
/// Report progress to the walsender every this many changes.
const PROGRESS_EVERY: u32 = 100;

/// The commit timestamp of a row change: known, unknown (streamed
/// in-progress transaction), or not requested.
#[derive(Clone, Copy)]
pub enum Ts {
    Commit(i64),
    Unknown,
}

pub struct Decoder {
    pub options: Options,
    out: Vec<u8>,
    change_ctx: pg_sys::MemoryContext,
    rels: RelCache,
    new_row: Deformed,
    old_row: Deformed,
    unchanged: Vec<usize>,
    changes_since_progress: u32,
    /// Whether anything was written for the current transaction.
    pub wrote_in_txn: bool,
    /// With `include-transaction`: the `B` of the transaction being decoded
    /// (its xid and first LSN) until its first change is written.
    pending_begin: Option<(u32, u64)>,
    /// Whether the transaction being decoded changed the extension's own
    /// table, and whether it had anything else (a change of another table,
    /// written or filtered out, or a transactional message).
    own_touched: bool,
    other_touched: bool,
    /// The last commit timestamp written and its JSON text: every change of a
    /// transaction carries the same one.
    ts_cache: (i64, Vec<u8>),
    /// With `include-position`: the commit LSN of the transaction being
    /// decoded and the index its next change gets.
    txn_pos: Option<(u64, u32)>,
    /// The position of the change being written.
    current_pos: Option<Position>,
    /// Inside a transaction with `batch-bytes`: objects wait in `out`.
    batching: bool,
}

/// One row change, as the change callbacks see it.
pub struct RowChange {
    pub action: pg_sys::ReorderBufferChangeType::Type,
    pub lsn: u64,
    pub xid: u32,
    pub ts: Ts,
    pub old: pg_sys::HeapTuple,
    pub new: pg_sys::HeapTuple,
}

impl Decoder {
    /// A decoder whose memory lives under `parent` (the decoding context's).
    ///
    /// # Safety
    /// `parent` must be a valid memory context.
    pub unsafe fn new(options: Options, parent: pg_sys::MemoryContext) -> Self {
        // SAFETY: creating child contexts of a valid context.
        let (change_ctx, cache_ctx) = unsafe {
            (
                pg_sys::AllocSetContextCreateInternal(
                    parent,
                    c"walcast change".as_ptr(),
                    pg_sys::ALLOCSET_DEFAULT_MINSIZE as usize,
                    pg_sys::ALLOCSET_DEFAULT_INITSIZE as usize,
                    pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
                ),
                pg_sys::AllocSetContextCreateInternal(
                    parent,
                    c"walcast relations".as_ptr(),
                    pg_sys::ALLOCSET_DEFAULT_MINSIZE as usize,
                    pg_sys::ALLOCSET_DEFAULT_INITSIZE as usize,
                    pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
                ),
            )
        };
        Decoder {
            options,
            out: Vec::with_capacity(8192),
            change_ctx,
            rels: RelCache::new(cache_ctx),
            new_row: Deformed::default(),
            old_row: Deformed::default(),
            unchanged: Vec::new(),
            changes_since_progress: 0,
            wrote_in_txn: false,
            pending_begin: None,
            own_touched: false,
            other_touched: false,
            ts_cache: (i64::MIN, Vec::new()),
            txn_pos: None,
            current_pos: None,
            batching: false,
        }
    }

    /// Called when PostgreSQL has already freed every memory context below
    /// the decoding context: forget them so dropping does not free them twice.
    pub fn forget_pg_memory(&mut self) {
        self.rels.forget_pg_memory();
        self.change_ctx = std::ptr::null_mut();
    }

    /// Runs `f` in the per-change memory context and resets it afterwards.
    pub fn in_change_context<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> R {
        // SAFETY: change_ctx is a valid context for the decoder's lifetime;
        // switching back restores the caller's context before the reset.
        let old = unsafe { pg_sys::MemoryContextSwitchTo(self.change_ctx) };
        let r = f(self);
        // SAFETY: as above.
        unsafe {
            pg_sys::MemoryContextSwitchTo(old);
            pg_sys::MemoryContextReset(self.change_ctx);
        }
        r
    }

    /// An object is complete in `out`. Inside a transaction with
    /// `batch-bytes`, it waits for more (separated by [`RECORD_SEPARATOR`])
    /// until the batch is that large; otherwise `out` goes to the walsender
    /// as one message.
    ///
    /// # Safety
    /// `ctx` must be the decoding context of the running callback.
    pub unsafe fn flush(&mut self, ctx: *mut pg_sys::LogicalDecodingContext) {
        self.wrote_in_txn = true;
        if self.batching && self.out.len() < self.options.batch_bytes {
            self.out.push(RECORD_SEPARATOR);
            return;
        }
        // SAFETY: ctx is valid per the contract.
        unsafe { self.write(ctx) };
    }

    /// Starts (`true`) or ends batching of a transaction's objects.
    pub fn set_batching(&mut self, on: bool) {
        self.batching = on && self.options.batch_bytes > 0;
    }

    /// Ends batching and writes the objects still waiting, if any.
    ///
    /// # Safety
    /// `ctx` must be the decoding context of the running callback.
    pub unsafe fn flush_batch(&mut self, ctx: *mut pg_sys::LogicalDecodingContext) {
        self.batching = false;
        if self.out.last() == Some(&RECORD_SEPARATOR) {
            self.out.pop();
        }
        if !self.out.is_empty() {
            // SAFETY: ctx is valid per the contract.
            unsafe { self.write(ctx) };
        }
    }

    /// Hands `out` to the walsender as one message.
    unsafe fn write(&mut self, ctx: *mut pg_sys::LogicalDecodingContext) {
        // SAFETY: the standard write protocol of an output plugin callback.
        unsafe {
            pg_sys::OutputPluginPrepareWrite(ctx, true);
            pg_sys::appendBinaryStringInfo(
                (*ctx).out,
                self.out.as_ptr().cast(),
                self.out.len() as i32,
            );
            pg_sys::OutputPluginWrite(ctx, true);
        }
        self.out.clear();
        if self.out.capacity() > KEEP_BUFFER_BYTES {
            self.out = Vec::with_capacity(8192);
        }
    }

    /// Reports progress every [`PROGRESS_EVERY`] changes so that the walsender
    /// can answer keepalives during very large transactions.
    ///
    /// # Safety
    /// `ctx` must be the decoding context of the running callback.
    pub unsafe fn count_change(&mut self, ctx: *mut pg_sys::LogicalDecodingContext) {
        self.changes_since_progress += 1;
        if self.changes_since_progress >= PROGRESS_EVERY {
            self.changes_since_progress = 0;
            // SAFETY: ctx is valid per the contract.
            unsafe { update_progress(ctx, false) };
        }
    }

    /// A transaction committed at `commit_lsn` starts (`None`: a streamed
    /// block, whose commit is not known yet).
    pub fn begin_positions(&mut self, commit_lsn: Option<u64>) {
        self.txn_pos = commit_lsn
            .filter(|_| self.options.include_position)
            .map(|c| (c, 0));
    }

    /// A change callback starts: every change of a transaction takes the
    /// next index, written or not, so positions do not depend on filters.
    pub fn next_position(&mut self, transactional: bool) {
        self.current_pos = match (&mut self.txn_pos, transactional) {
            (Some((commit, index)), true) => {
                let p = Position::new(Lsn(*commit), *index);
                *index = index.saturating_add(1);
                Some(p)
            }
            _ => None,
        };
    }

    fn put_position(&mut self) {
        if let Some(p) = self.current_pos {
            self.out.extend_from_slice(b",\"pos\":\"");
            p.write_to(&mut self.out);
            self.out.push(b'"');
        }
    }

    fn begin_object(&mut self, action: &[u8]) {
        self.out.extend_from_slice(b"{\"action\":\"");
        self.out.extend_from_slice(action);
        self.out.push(b'"');
    }

    fn put_lsn(&mut self, key: &[u8], lsn: u64) {
        self.out.extend_from_slice(key);
        self.out.push(b'"');
        Lsn(lsn).write_to(&mut self.out);
        self.out.push(b'"');
    }

    fn put_xid(&mut self, xid: u32) {
        self.out.extend_from_slice(b",\"xid\":");
        json::write_u64(&mut self.out, u64::from(xid));
    }

    fn put_ts(&mut self, ts: Ts) {
        self.out.extend_from_slice(b",\"ts\":");
        match ts {
            Ts::Commit(t) => {
                if self.ts_cache.0 != t || self.ts_cache.1.is_empty() {
                    self.ts_cache.1.clear();
                    timestamp::write_commit_ts(&mut self.ts_cache.1, t);
                    self.ts_cache.0 = t;
                }
                self.out.extend_from_slice(&self.ts_cache.1);
            }
            Ts::Unknown => self.out.extend_from_slice(b"null"),
        }
    }

    /// `"action"`, then `lsn`, `xid` and `ts` as the options ask.
    fn change_header(&mut self, action: &[u8], lsn: u64, xid: u32, ts: Ts) {
        self.begin_object(action);
        if self.options.include_lsn {
            self.put_lsn(b",\"lsn\":", lsn);
        }
        if self.options.include_xids {
            self.put_xid(xid);
        }
        if self.options.include_timestamp {
            self.put_ts(ts);
        }
        self.put_position();
    }

    /// Writes an INSERT, UPDATE or DELETE (after its transaction's `B`, if
    /// that still waits). Returns false when filtered out.
    ///
    /// # Safety
    /// `ctx` must be the decoding context of the running callback; `rel`
    /// the change's open relation and the tuples valid or NULL.
    pub unsafe fn row_change(
        &mut self,
        ctx: *mut pg_sys::LogicalDecodingContext,
        rel: pg_sys::Relation,
        c: &RowChange,
    ) -> bool {
        use pg_sys::ReorderBufferChangeType::*;
        let (code, wanted): (&[u8], bool) = match c.action {
            REORDER_BUFFER_CHANGE_INSERT => (
                Action::Insert.letter().as_bytes(),
                self.options.actions.insert,
            ),
            REORDER_BUFFER_CHANGE_UPDATE => (
                Action::Update.letter().as_bytes(),
                self.options.actions.update,
            ),
            REORDER_BUFFER_CHANGE_DELETE => (
                Action::Delete.letter().as_bytes(),
                self.options.actions.delete,
            ),
            _ => return false,
        };
        // The relation cache is borrowed while writing; take it out of self.
        let mut rels = std::mem::replace(&mut self.rels, RelCache::placeholder());
        // SAFETY: rel is valid per the contract.
        let info = unsafe { rels.get(rel, &self.options) };
        self.own_touched |= info.own;
        self.other_touched |= !info.own;
        let written = wanted && info.allowed && {
            // SAFETY: ctx is valid per the contract; rel and the tuples too.
            unsafe {
                self.write_pending_begin(ctx);
                self.write_row(rel, info, code, c)
            };
            true
        };
        self.rels = rels;
        written
    }

    unsafe fn write_row(
        &mut self,
        rel: pg_sys::Relation,
        info: &RelInfo,
        code: &[u8],
        c: &RowChange,
    ) {
        self.change_header(code, c.lsn, c.xid, c.ts);
        self.out.extend_from_slice(&info.names);
        // SAFETY: rel is valid.
        let desc = unsafe { (*rel).rd_att };
        self.unchanged.clear();
        let mut unchanged = std::mem::take(&mut self.unchanged);
        if !c.new.is_null() {
            // SAFETY: the new tuple belongs to rel.
            unsafe { self.new_row.fill(c.new, desc) };
            self.out.extend_from_slice(b",\"columns\":");
            // SAFETY: new_row was just filled from a tuple of rel.
            unsafe {
                tuple::write_object(
                    &mut self.out,
                    info,
                    &self.new_row,
                    Which::All,
                    &mut unchanged,
                )
            };
        }
        if code != Action::Insert.letter().as_bytes() {
            self.out.extend_from_slice(b",\"identity\":");
            let full = info.replident == pg_sys::REPLICA_IDENTITY_FULL;
            let which = if full { Which::All } else { Which::IdentityKey };
            let has_key = full || info.columns.iter().any(|col| col.identity && !col.dropped);
            let mut ignored = Vec::new();
            if !c.old.is_null() {
                // SAFETY: the old tuple belongs to rel.
                unsafe { self.old_row.fill(c.old, desc) };
                // SAFETY: old_row was just filled from a tuple of rel.
                unsafe {
                    tuple::write_object(&mut self.out, info, &self.old_row, which, &mut ignored)
                };
            } else if !c.new.is_null() && has_key && !full {
                // An UPDATE that kept its key: the key is in the new row.
                // SAFETY: new_row holds the new tuple of rel.
                unsafe {
                    tuple::write_object(
                        &mut self.out,
                        info,
                        &self.new_row,
                        Which::IdentityKey,
                        &mut ignored,
                    )
                };
            } else {
                self.out.extend_from_slice(b"null");
            }
        }
        if !unchanged.is_empty() {
            self.out.extend_from_slice(b",\"unchanged_toast\":[");
            for (n, &i) in unchanged.iter().enumerate() {
                if n > 0 {
                    self.out.push(b',');
                }
                self.out.extend_from_slice(&info.columns[i].name_json);
            }
            self.out.push(b']');
        }
        self.unchanged = unchanged;
        if let Some(types) = &info.types {
            self.out.extend_from_slice(types);
        }
        self.out.push(b'}');
    }

    /// Writes a TRUNCATE of the allowed relations among `rels` (after its
    /// transaction's `B`, if that still waits). Returns false when none is
    /// allowed.
    ///
    /// # Safety
    /// `ctx` must be the decoding context of the running callback;
    /// `relations` must hold `n` valid open relations.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn truncate(
        &mut self,
        ctx: *mut pg_sys::LogicalDecodingContext,
        relations: *mut pg_sys::Relation,
        n: usize,
        lsn: u64,
        xid: u32,
        ts: Ts,
        cascade: bool,
        restart_seqs: bool,
    ) -> bool {
        let mut names: Vec<Vec<u8>> = Vec::with_capacity(n);
        let mut rels = std::mem::replace(&mut self.rels, RelCache::placeholder());
        for i in 0..n {
            // SAFETY: i < n relations, per the contract.
            let rel = unsafe { *relations.add(i) };
            // SAFETY: rel is a valid open relation.
            let info = unsafe { rels.get(rel, &self.options) };
            self.own_touched |= info.own;
            self.other_touched |= !info.own;
            if info.allowed {
                names.push(info.qualified.clone());
            }
        }
        self.rels = rels;
        if names.is_empty() || !self.options.actions.truncate {
            return false;
        }
        // SAFETY: ctx is valid per the contract.
        unsafe { self.write_pending_begin(ctx) };
        self.change_header(Action::Truncate.letter().as_bytes(), lsn, xid, ts);
        self.out.extend_from_slice(b",\"tables\":[");
        for (i, name) in names.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            self.out.extend_from_slice(name);
        }
        self.out.extend_from_slice(b"],\"cascade\":");
        self.out
            .extend_from_slice(if cascade { b"true" } else { b"false" });
        self.out.extend_from_slice(b",\"restart_seqs\":");
        self.out
            .extend_from_slice(if restart_seqs { b"true" } else { b"false" });
        self.out.push(b'}');
        true
    }

    /// Writes a logical message, or the DDL object for walcast's own DDL
    /// messages (a transactional one after its transaction's `B`, if that
    /// still waits). Returns false when filtered out.
    ///
    /// # Safety
    /// `ctx` must be the decoding context of the running callback.
    pub unsafe fn message(
        &mut self,
        ctx: *mut pg_sys::LogicalDecodingContext,
        lsn: u64,
        txn: Option<(u32, Ts)>,
        prefix: &[u8],
        content: &[u8],
    ) -> bool {
        self.other_touched |= txn.is_some();
        if prefix == DDL_PREFIX.as_bytes() {
            if let (Some((xid, ts)), Some(ddl)) = (txn, Ddl::parse(content)) {
                if !self.options.actions.ddl {
                    return false;
                }
                // SAFETY: ctx is valid per the contract.
                unsafe { self.write_pending_begin(ctx) };
                self.change_header(Action::Ddl.letter().as_bytes(), lsn, xid, ts);
                self.out.extend_from_slice(b",\"tag\":");
                json::write_str(&mut self.out, ddl.tag.as_bytes());
                self.out.extend_from_slice(b",\"object\":");
                match &ddl.object {
                    Some(o) => json::write_str(&mut self.out, o.as_bytes()),
                    None => self.out.extend_from_slice(b"null"),
                }
                self.out.extend_from_slice(b",\"sql\":");
                json::write_str(&mut self.out, ddl.sql.as_bytes());
                self.out.push(b'}');
                return true;
            }
        }
        let prefix_str = String::from_utf8_lossy(prefix);
        if !self.options.actions.message || !self.options.message_allowed(&prefix_str) {
            return false;
        }
        if txn.is_some() {
            // SAFETY: ctx is valid per the contract.
            unsafe { self.write_pending_begin(ctx) };
        }
        self.begin_object(Action::Message.letter().as_bytes());
        self.put_lsn(b",\"lsn\":", lsn);
        if let (Some((xid, _)), true) = (txn, self.options.include_xids) {
            self.put_xid(xid);
        }
        if txn.is_some() {
            self.put_position();
        }
        self.out.extend_from_slice(b",\"transactional\":");
        self.out
            .extend_from_slice(if txn.is_some() { b"true" } else { b"false" });
        self.out.extend_from_slice(b",\"prefix\":");
        json::write_str(&mut self.out, prefix_str.as_bytes());
        match std::str::from_utf8(content) {
            Ok(text) => {
                self.out.extend_from_slice(b",\"content\":");
                json::write_str(&mut self.out, text.as_bytes());
            }
            Err(_) => {
                // Not text: the bytes as to_json writes a bytea.
                self.out
                    .extend_from_slice(b",\"content\":null,\"content_bytea\":");
                json::write_bytea_hex(&mut self.out, content);
            }
        }
        self.out.push(b'}');
        true
    }

    /// A transaction starts: its `B` (with `include-transaction`) waits for
    /// its first change, so that a transaction that changed only the
    /// extension's own table writes nothing at all.
    pub fn start_transaction(&mut self, xid: u32, first_lsn: u64) {
        self.wrote_in_txn = false;
        self.own_touched = false;
        self.other_touched = false;
        self.pending_begin = self.options.include_transaction.then_some((xid, first_lsn));
    }

    /// Writes the transaction's `B` if it still waits.
    ///
    /// # Safety
    /// `ctx` must be the decoding context of the running callback.
    unsafe fn write_pending_begin(&mut self, ctx: *mut pg_sys::LogicalDecodingContext) {
        if let Some((xid, first_lsn)) = self.pending_begin.take() {
            self.begin(xid, first_lsn);
            // SAFETY: ctx is valid per the contract.
            unsafe { self.flush(ctx) };
        }
    }

    /// At the commit: true when the transaction changed only the extension's
    /// own table, so that neither its `B` nor its `C` is written. Otherwise
    /// the `B` is written if it still waits (a transaction without changes,
    /// or whose changes were all filtered out, is an empty `B`/`C` pair).
    ///
    /// # Safety
    /// `ctx` must be the decoding context of the running callback.
    pub unsafe fn end_transaction(&mut self, ctx: *mut pg_sys::LogicalDecodingContext) -> bool {
        if self.own_touched && !self.other_touched && self.pending_begin.is_some() {
            self.pending_begin = None;
            return true;
        }
        // SAFETY: ctx is valid per the contract.
        unsafe { self.write_pending_begin(ctx) };
        false
    }

    /// `{"action":"B",...}` (with `include-transaction`).
    fn begin(&mut self, xid: u32, first_lsn: u64) {
        self.begin_object(Action::Begin.letter().as_bytes());
        self.put_xid(xid);
        self.put_lsn(b",\"lsn\":", first_lsn);
        self.out.push(b'}');
    }

    /// `{"action":"C",...}` (with `include-transaction`), or `SC` for a
    /// streamed transaction (always).
    pub fn commit(&mut self, action: &[u8], xid: u32, commit_lsn: u64, end_lsn: u64, ts: i64) {
        self.begin_object(action);
        self.put_xid(xid);
        self.put_lsn(b",\"lsn\":", commit_lsn);
        if self.options.include_timestamp {
            self.put_ts(Ts::Commit(ts));
        }
        self.put_lsn(b",\"end_lsn\":", end_lsn);
        self.out.push(b'}');
    }

    /// `SS` (stream start) with whether this is the transaction's first block.
    pub fn stream_start(&mut self, xid: u32, first: bool) {
        self.begin_object(Action::StreamStart.letter().as_bytes());
        self.put_xid(xid);
        self.out.extend_from_slice(if first {
            b",\"first\":true}"
        } else {
            b",\"first\":false}"
        });
    }

    /// `SE` (stream stop).
    pub fn stream_stop(&mut self, xid: u32) {
        self.begin_object(Action::StreamStop.letter().as_bytes());
        self.put_xid(xid);
        self.out.push(b'}');
    }

    /// `SA` (stream abort) of a transaction or of one of its subtransactions.
    pub fn stream_abort(&mut self, xid: u32, top_xid: u32, abort_lsn: u64) {
        self.begin_object(Action::StreamAbort.letter().as_bytes());
        self.put_xid(xid);
        self.out.extend_from_slice(b",\"top_xid\":");
        json::write_u64(&mut self.out, u64::from(top_xid));
        self.put_lsn(b",\"lsn\":", abort_lsn);
        self.out.push(b'}');
    }
}

/// The content of a `walcast.ddl` message, as the event trigger writes it.
struct Ddl {
    tag: String,
    object: Option<String>,
    sql: String,
}

impl Ddl {
    fn parse(content: &[u8]) -> Option<Ddl> {
        let v: serde_json::Value = serde_json::from_slice(content).ok()?;
        let tag = v.get("tag")?.as_str()?.to_owned();
        let object = v.get("object").and_then(|o| o.as_str()).map(str::to_owned);
        let sql = v.get("sql")?.as_str()?.to_owned();
        Some(Ddl { tag, object, sql })
    }
}

/// `OutputPluginUpdateProgress` (PostgreSQL 15+ signature).
///
/// # Safety
/// `ctx` must be the decoding context of the running callback.
pub unsafe fn update_progress(ctx: *mut pg_sys::LogicalDecodingContext, skipped_xact: bool) {
    // SAFETY: valid ctx per the contract.
    unsafe { pg_sys::OutputPluginUpdateProgress(ctx, skipped_xact) };
}
