//! The logical decoding callbacks PostgreSQL calls, each a thin `#[pg_guard]`
//! wrapper (a Rust panic becomes an SQL ERROR) around the [`Decoder`].

use crate::decoder::{update_progress, Decoder, RowChange, Ts};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::CStr;
use walcast_abi::Action;

/// Fills PostgreSQL's callback table.
pub fn register(cb: &mut pg_sys::OutputPluginCallbacks) {
    cb.startup_cb = Some(startup);
    cb.begin_cb = Some(begin);
    cb.change_cb = Some(change);
    cb.truncate_cb = Some(truncate);
    cb.commit_cb = Some(commit);
    cb.message_cb = Some(message);
    cb.shutdown_cb = Some(shutdown);
    cb.stream_start_cb = Some(stream_start);
    cb.stream_stop_cb = Some(stream_stop);
    cb.stream_abort_cb = Some(stream_abort);
    cb.stream_commit_cb = Some(stream_commit);
    cb.stream_change_cb = Some(stream_change);
    cb.stream_message_cb = Some(stream_message);
    cb.stream_truncate_cb = Some(stream_truncate);
}

/// The decoder stored in the decoding context.
///
/// # Safety
/// `ctx` must be a decoding context whose startup callback has run.
unsafe fn decoder<'a>(ctx: *mut pg_sys::LogicalDecodingContext) -> &'a mut Decoder {
    // SAFETY: startup stored a leaked Box<Decoder> here; it lives until the
    // decoding context's memory is deleted, after the last callback.
    unsafe { &mut *((*ctx).output_plugin_private as *mut Decoder) }
}

unsafe fn commit_time(txn: *mut pg_sys::ReorderBufferTXN) -> i64 {
    // SAFETY: txn is valid; in a committed transaction the union holds commit_time.
    unsafe { (*txn).xact_time.commit_time }
}

/// Drops the decoder when PostgreSQL deletes the decoding context's memory
/// (at the end of decoding, on success or error alike).
unsafe extern "C-unwind" fn drop_decoder(arg: *mut std::ffi::c_void) {
    // SAFETY: arg is the pointer startup leaked from a Box<Decoder>, and this
    // callback runs exactly once.
    let mut decoder = unsafe { Box::from_raw(arg as *mut Decoder) };
    // Child memory contexts are deleted before reset callbacks run.
    decoder.forget_pg_memory();
    drop(decoder);
}

#[pg_guard]
unsafe extern "C-unwind" fn startup(
    ctx: *mut pg_sys::LogicalDecodingContext,
    opt: *mut pg_sys::OutputPluginOptions,
    _is_init: bool,
) {
    // SAFETY: reading the database encoding of this backend.
    let encoding = unsafe { pg_sys::GetDatabaseEncoding() };
    if encoding != pg_sys::pg_enc::PG_UTF8 as i32 {
        // SAFETY: returns a static encoding name.
        let name = unsafe { CStr::from_ptr(pg_sys::GetDatabaseEncodingName()) }.to_string_lossy();
        ereport!(
            PgLogLevel::ERROR,
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("walcast: database encoding is {name}, but walcast writes JSON and needs a UTF8 database"),
            "create the database with ENCODING 'UTF8'"
        );
    }
    // SAFETY: PostgreSQL passes valid ctx and options pointers.
    unsafe {
        let options = crate::options::parse((*ctx).output_plugin_options);
        (*opt).output_type = pg_sys::OutputPluginOutputType::OUTPUT_PLUGIN_TEXTUAL_OUTPUT;
        (*opt).receive_rewrites = false;
        (*ctx).streaming = (*ctx).streaming && options.stream_changes;
        let decoder = Box::into_raw(Box::new(Decoder::new(options, (*ctx).context)));
        (*ctx).output_plugin_private = decoder.cast();
        let cb = pg_sys::MemoryContextAlloc(
            (*ctx).context,
            std::mem::size_of::<pg_sys::MemoryContextCallback>(),
        ) as *mut pg_sys::MemoryContextCallback;
        (*cb).func = Some(drop_decoder);
        (*cb).arg = decoder.cast();
        pg_sys::MemoryContextRegisterResetCallback((*ctx).context, cb);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn shutdown(_ctx: *mut pg_sys::LogicalDecodingContext) {
    // Nothing to do: the decoder is dropped with the decoding context's memory.
}

#[pg_guard]
unsafe extern "C-unwind" fn begin(
    ctx: *mut pg_sys::LogicalDecodingContext,
    txn: *mut pg_sys::ReorderBufferTXN,
) {
    // SAFETY: valid ctx and txn from PostgreSQL.
    let (d, xid, first_lsn, commit_lsn) = unsafe {
        (
            decoder(ctx),
            (*txn).xid.into_inner(),
            (*txn).first_lsn,
            (*txn).final_lsn,
        )
    };
    // A transaction is decoded once it committed: final_lsn is its commit record.
    d.begin_positions(Some(commit_lsn));
    d.set_batching(true);
    d.start_transaction(xid, first_lsn);
}

#[pg_guard]
unsafe extern "C-unwind" fn commit(
    ctx: *mut pg_sys::LogicalDecodingContext,
    txn: *mut pg_sys::ReorderBufferTXN,
    commit_lsn: pg_sys::XLogRecPtr,
) {
    // SAFETY: valid ctx and txn from PostgreSQL.
    let d = unsafe { decoder(ctx) };
    // SAFETY: as above.
    let own_only = unsafe { d.end_transaction(ctx) };
    let skipped = own_only || (!d.wrote_in_txn && !d.options.include_transaction);
    // SAFETY: as above.
    unsafe { update_progress(ctx, skipped) };
    // The transaction's objects still waiting go out now, together with its C.
    d.set_batching(false);
    if d.options.include_transaction && !own_only {
        // SAFETY: as above.
        unsafe {
            d.commit(
                Action::Commit.letter().as_bytes(),
                (*txn).xid.into_inner(),
                commit_lsn,
                (*txn).end_lsn,
                commit_time(txn),
            )
        };
        // SAFETY: as above.
        unsafe { d.flush(ctx) };
    } else {
        // SAFETY: as above.
        unsafe { d.flush_batch(ctx) };
    }
}

unsafe fn row_change(
    ctx: *mut pg_sys::LogicalDecodingContext,
    relation: pg_sys::Relation,
    change: *mut pg_sys::ReorderBufferChange,
    xid: u32,
    ts: Ts,
) {
    if crate::DEBUG_PANIC.get() {
        panic!("walcast.debug_panic is on: deliberate panic in the change callback");
    }
    // SAFETY: valid ctx, relation and change from PostgreSQL.
    unsafe {
        let d = decoder(ctx);
        d.next_position(true);
        let tp = (*change).data.tp;
        let c = RowChange {
            action: (*change).action,
            lsn: (*change).lsn,
            xid,
            ts,
            old: heap_tuple(tp.oldtuple),
            new: heap_tuple(tp.newtuple),
        };
        if d.in_change_context(|d| d.row_change(ctx, relation, &c)) {
            d.flush(ctx);
        }
        d.count_change(ctx);
    }
}

#[cfg(any(feature = "pg15", feature = "pg16"))]
unsafe fn heap_tuple(buf: *mut pg_sys::ReorderBufferTupleBuf) -> pg_sys::HeapTuple {
    if buf.is_null() {
        std::ptr::null_mut()
    } else {
        // SAFETY: a non-null tuple buffer embeds its HeapTupleData.
        unsafe { &mut (*buf).tuple }
    }
}

#[cfg(any(feature = "pg17", feature = "pg18"))]
unsafe fn heap_tuple(t: pg_sys::HeapTuple) -> pg_sys::HeapTuple {
    t
}

#[pg_guard]
unsafe extern "C-unwind" fn change(
    ctx: *mut pg_sys::LogicalDecodingContext,
    txn: *mut pg_sys::ReorderBufferTXN,
    relation: pg_sys::Relation,
    change: *mut pg_sys::ReorderBufferChange,
) {
    // SAFETY: valid pointers from PostgreSQL.
    unsafe {
        row_change(
            ctx,
            relation,
            change,
            (*txn).xid.into_inner(),
            Ts::Commit(commit_time(txn)),
        )
    }
}

unsafe fn truncate_change(
    ctx: *mut pg_sys::LogicalDecodingContext,
    nrelations: i32,
    relations: *mut pg_sys::Relation,
    change: *mut pg_sys::ReorderBufferChange,
    xid: u32,
    ts: Ts,
) {
    // SAFETY: valid pointers from PostgreSQL; relations holds nrelations entries.
    unsafe {
        let d = decoder(ctx);
        d.next_position(true);
        let t = (*change).data.truncate;
        let lsn = (*change).lsn;
        let n = usize::try_from(nrelations).unwrap_or(0);
        if d.in_change_context(|d| {
            d.truncate(ctx, relations, n, lsn, xid, ts, t.cascade, t.restart_seqs)
        }) {
            d.flush(ctx);
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn truncate(
    ctx: *mut pg_sys::LogicalDecodingContext,
    txn: *mut pg_sys::ReorderBufferTXN,
    nrelations: std::ffi::c_int,
    relations: *mut pg_sys::Relation,
    change: *mut pg_sys::ReorderBufferChange,
) {
    // SAFETY: valid pointers from PostgreSQL.
    unsafe {
        truncate_change(
            ctx,
            nrelations,
            relations,
            change,
            (*txn).xid.into_inner(),
            Ts::Commit(commit_time(txn)),
        )
    }
}

unsafe fn message_change(
    ctx: *mut pg_sys::LogicalDecodingContext,
    lsn: u64,
    txn: Option<(u32, Ts)>,
    prefix: *const std::ffi::c_char,
    size: pg_sys::Size,
    content: *const std::ffi::c_char,
) {
    // SAFETY: prefix is NUL-terminated; content has `size` bytes.
    unsafe {
        let d = decoder(ctx);
        d.next_position(txn.is_some());
        let prefix = CStr::from_ptr(prefix).to_bytes();
        let content: &[u8] = if size == 0 {
            &[]
        } else {
            std::slice::from_raw_parts(content as *const u8, size)
        };
        if d.in_change_context(|d| d.message(ctx, lsn, txn, prefix, content)) {
            d.flush(ctx);
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn message(
    ctx: *mut pg_sys::LogicalDecodingContext,
    txn: *mut pg_sys::ReorderBufferTXN,
    lsn: pg_sys::XLogRecPtr,
    transactional: bool,
    prefix: *const std::ffi::c_char,
    size: pg_sys::Size,
    content: *const std::ffi::c_char,
) {
    // SAFETY: txn is valid when the message is transactional.
    let t = (transactional && !txn.is_null())
        .then(|| unsafe { ((*txn).xid.into_inner(), Ts::Commit(commit_time(txn))) });
    // SAFETY: valid pointers from PostgreSQL.
    unsafe { message_change(ctx, lsn, t, prefix, size, content) }
}

mod streaming {
    //! Callbacks for in-progress transactions (`stream-changes`).
    //! Changes inside an `SS`..`SE` block belong to a transaction that has not
    //! committed yet: consumers hold them until `SC` and discard them on `SA`.

    use super::*;

    /// The xid a streamed change belongs to: its own (sub)transaction, so an
    /// `SA` for a subtransaction says which changes to discard.
    unsafe fn change_xid(
        change: *mut pg_sys::ReorderBufferChange,
        txn: *mut pg_sys::ReorderBufferTXN,
    ) -> u32 {
        // SAFETY: valid pointers from PostgreSQL.
        unsafe {
            let own = (*change).txn;
            if own.is_null() {
                (*txn).xid.into_inner()
            } else {
                (*own).xid.into_inner()
            }
        }
    }

    #[pg_guard]
    pub unsafe extern "C-unwind" fn stream_start(
        ctx: *mut pg_sys::LogicalDecodingContext,
        txn: *mut pg_sys::ReorderBufferTXN,
    ) {
        // SAFETY: valid pointers from PostgreSQL.
        unsafe {
            let d = decoder(ctx);
            let first = (*txn).txn_flags & pg_sys::RBTXN_IS_STREAMED == 0;
            d.begin_positions(None);
            d.flush_batch(ctx);
            d.stream_start((*txn).xid.into_inner(), first);
            d.flush(ctx);
        }
    }

    #[pg_guard]
    pub unsafe extern "C-unwind" fn stream_stop(
        ctx: *mut pg_sys::LogicalDecodingContext,
        txn: *mut pg_sys::ReorderBufferTXN,
    ) {
        // SAFETY: valid pointers from PostgreSQL.
        unsafe {
            let d = decoder(ctx);
            d.stream_stop((*txn).xid.into_inner());
            d.flush(ctx);
        }
    }

    #[pg_guard]
    pub unsafe extern "C-unwind" fn stream_abort(
        ctx: *mut pg_sys::LogicalDecodingContext,
        txn: *mut pg_sys::ReorderBufferTXN,
        abort_lsn: pg_sys::XLogRecPtr,
    ) {
        // SAFETY: valid pointers from PostgreSQL.
        unsafe {
            let d = decoder(ctx);
            let top = (*txn).toptxn;
            let top_xid = if top.is_null() {
                (*txn).xid.into_inner()
            } else {
                (*top).xid.into_inner()
            };
            d.stream_abort((*txn).xid.into_inner(), top_xid, abort_lsn);
            d.flush(ctx);
        }
    }

    #[pg_guard]
    pub unsafe extern "C-unwind" fn stream_commit(
        ctx: *mut pg_sys::LogicalDecodingContext,
        txn: *mut pg_sys::ReorderBufferTXN,
        commit_lsn: pg_sys::XLogRecPtr,
    ) {
        // SAFETY: valid pointers from PostgreSQL.
        unsafe {
            let d = decoder(ctx);
            d.commit(
                Action::StreamCommit.letter().as_bytes(),
                (*txn).xid.into_inner(),
                commit_lsn,
                (*txn).end_lsn,
                commit_time(txn),
            );
            d.flush(ctx);
        }
    }

    #[pg_guard]
    pub unsafe extern "C-unwind" fn stream_change(
        ctx: *mut pg_sys::LogicalDecodingContext,
        txn: *mut pg_sys::ReorderBufferTXN,
        relation: pg_sys::Relation,
        change: *mut pg_sys::ReorderBufferChange,
    ) {
        // SAFETY: valid pointers from PostgreSQL.
        unsafe { row_change(ctx, relation, change, change_xid(change, txn), Ts::Unknown) }
    }

    #[pg_guard]
    pub unsafe extern "C-unwind" fn stream_truncate(
        ctx: *mut pg_sys::LogicalDecodingContext,
        txn: *mut pg_sys::ReorderBufferTXN,
        nrelations: std::ffi::c_int,
        relations: *mut pg_sys::Relation,
        change: *mut pg_sys::ReorderBufferChange,
    ) {
        // SAFETY: valid pointers from PostgreSQL.
        unsafe {
            truncate_change(
                ctx,
                nrelations,
                relations,
                change,
                change_xid(change, txn),
                Ts::Unknown,
            )
        }
    }

    #[pg_guard]
    pub unsafe extern "C-unwind" fn stream_message(
        ctx: *mut pg_sys::LogicalDecodingContext,
        txn: *mut pg_sys::ReorderBufferTXN,
        lsn: pg_sys::XLogRecPtr,
        transactional: bool,
        prefix: *const std::ffi::c_char,
        size: pg_sys::Size,
        content: *const std::ffi::c_char,
    ) {
        // SAFETY: txn is valid when the message is transactional.
        let t = (transactional && !txn.is_null())
            .then(|| unsafe { ((*txn).xid.into_inner(), Ts::Unknown) });
        // SAFETY: valid pointers from PostgreSQL.
        unsafe { message_change(ctx, lsn, t, prefix, size, content) }
    }
}
use streaming::*;
