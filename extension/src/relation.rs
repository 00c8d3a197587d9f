//! Per-relation metadata, built on a relation's first change and kept until a
//! relcache invalidation names the relation (ALTER TABLE, ...).

use crate::value::ValueKind;
use pgrx::pg_sys;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CStr;
use walcast_format::{json, Options};

/// One column of a relation.
pub struct Column {
    /// `"name":` already escaped.
    pub key: Vec<u8>,
    /// The column name, escaped, without quotes (for `unchanged_toast`).
    pub name_json: Vec<u8>,
    /// Dropped columns keep their slot in the tuple but are never written.
    pub dropped: bool,
    /// A varlena column, which may hold an unchanged-TOAST pointer.
    pub varlena: bool,
    /// Part of the replica identity key (DEFAULT / INDEX).
    pub identity: bool,
    pub kind: ValueKind,
}

/// What the plugin knows about one relation.
pub struct RelInfo {
    /// Whether this relation's changes are written: the options' table
    /// filters let it through and it is not the extension's own table.
    pub allowed: bool,
    /// The extension's own bookkeeping table ([`is_own_table`]).
    pub own: bool,
    /// `,"schema":"s","table":"t"`
    pub names: Vec<u8>,
    /// `schema.table` with identifiers quoted where needed, as a JSON string.
    pub qualified: Vec<u8>,
    /// `pg_class.relreplident`: d(efault), n(othing), f(ull), i(ndex).
    pub replident: u8,
    pub columns: Vec<Column>,
    /// `,"types":{...}` when `include-types` is on.
    pub types: Option<Vec<u8>>,
    /// Memory for FmgrInfos and expression nodes of this relation's columns.
    mcxt: pg_sys::MemoryContext,
}

impl Drop for RelInfo {
    fn drop(&mut self) {
        if !self.mcxt.is_null() {
            // SAFETY: mcxt was created by RelInfo::build and is only deleted here.
            unsafe { pg_sys::MemoryContextDelete(self.mcxt) };
        }
    }
}

thread_local! {
    /// Relation oids invalidated since the caches last looked; `InvalidOid`
    /// means all. Kept apart from the caches so the invalidation callback never
    /// touches a cache that is being used.
    static PENDING: RefCell<Vec<pg_sys::Oid>> = const { RefCell::new(Vec::new()) };
    static REGISTERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn relcache_invalidated(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    PENDING.with(|p| {
        if let Ok(mut p) = p.try_borrow_mut() {
            if p.len() < 1024 {
                p.push(relid);
            } else {
                p.clear();
                p.push(pg_sys::InvalidOid);
            }
        }
    });
}

/// Relation metadata of one decoding session.
pub struct RelCache {
    map: HashMap<pg_sys::Oid, RelInfo>,
    parent: pg_sys::MemoryContext,
}

impl RelCache {
    /// A cache whose per-relation memory lives under `parent`.
    pub fn new(parent: pg_sys::MemoryContext) -> Self {
        if !REGISTERED.get() {
            // SAFETY: registering a process-lifetime callback; it only records oids.
            unsafe {
                pg_sys::CacheRegisterRelcacheCallback(
                    Some(relcache_invalidated),
                    pg_sys::Datum::from(0),
                )
            };
            REGISTERED.set(true);
        }
        RelCache {
            map: HashMap::new(),
            parent,
        }
    }

    /// An empty cache used while the real one is borrowed out.
    pub fn placeholder() -> Self {
        RelCache {
            map: HashMap::new(),
            parent: std::ptr::null_mut(),
        }
    }

    /// PostgreSQL freed the memory contexts already: drop without freeing them.
    pub fn forget_pg_memory(&mut self) {
        for info in self.map.values_mut() {
            info.mcxt = std::ptr::null_mut();
        }
        self.map.clear();
    }

    fn apply_invalidations(&mut self) {
        let pending = PENDING.with(|p| {
            p.try_borrow_mut()
                .map(|mut p| std::mem::take(&mut *p))
                .unwrap_or_default()
        });
        for oid in pending {
            if oid == pg_sys::InvalidOid {
                self.map.clear();
            } else {
                self.map.remove(&oid);
            }
        }
    }

    /// The metadata of `rel`, built on first use.
    ///
    /// # Safety
    /// `rel` must be a valid open relation; catalog access must be possible.
    pub unsafe fn get(&mut self, rel: pg_sys::Relation, options: &Options) -> &RelInfo {
        self.apply_invalidations();
        // SAFETY: rel is valid per the contract.
        let oid = unsafe { (*rel).rd_id };
        if !self.map.contains_key(&oid) {
            // SAFETY: as above.
            let info = unsafe { RelInfo::build(rel, options, self.parent) };
            self.map.insert(oid, info);
        }
        &self.map[&oid]
    }
}

/// The extension's own bookkeeping table (`walcast.streams`, written by
/// walcast-proxy when it creates a stream). Its changes are never written:
/// they are no one's data, and a stream's creation must not reach the others
/// (a transaction that changed nothing else gives no `B`/`C` either).
/// The extension is not relocatable, so its schema is always `walcast`.
fn is_own_table(schema: &str, table: &str) -> bool {
    schema == "walcast" && table == "streams"
}

/// `schema.table`, each part quoted only when PostgreSQL would need it.
///
/// # Safety
/// Catalog access must be possible.
pub unsafe fn quoted_name(schema: &CStr, table: &CStr) -> String {
    // SAFETY: quote_identifier takes and returns NUL-terminated strings.
    unsafe {
        let s = CStr::from_ptr(pg_sys::quote_identifier(schema.as_ptr()));
        let t = CStr::from_ptr(pg_sys::quote_identifier(table.as_ptr()));
        format!("{}.{}", s.to_string_lossy(), t.to_string_lossy())
    }
}

impl RelInfo {
    unsafe fn build(
        rel: pg_sys::Relation,
        options: &Options,
        parent: pg_sys::MemoryContext,
    ) -> RelInfo {
        // SAFETY: rel is a valid open relation (caller's contract); the catalog
        // lookups run inside the decoding transaction.
        unsafe {
            let form = &*(*rel).rd_rel;
            let table = CStr::from_ptr(form.relname.data.as_ptr());
            let nsp = pg_sys::get_namespace_name(form.relnamespace);
            let schema = if nsp.is_null() {
                c""
            } else {
                CStr::from_ptr(nsp)
            };
            let schema_s = schema.to_string_lossy();
            let table_s = table.to_string_lossy();
            let own = is_own_table(&schema_s, &table_s);
            let allowed = !own && options.table_allowed(&schema_s, &table_s);

            let mut names = Vec::with_capacity(32 + schema_s.len() + table_s.len());
            names.extend_from_slice(b",\"schema\":");
            json::write_str(&mut names, schema.to_bytes());
            names.extend_from_slice(b",\"table\":");
            json::write_str(&mut names, table.to_bytes());
            let mut qualified = Vec::new();
            json::write_str(&mut qualified, quoted_name(schema, table).as_bytes());

            let mcxt = pg_sys::AllocSetContextCreateInternal(
                parent,
                c"walcast relation".as_ptr(),
                pg_sys::ALLOCSET_SMALL_MINSIZE as usize,
                pg_sys::ALLOCSET_SMALL_INITSIZE as usize,
                pg_sys::ALLOCSET_SMALL_MAXSIZE as usize,
            );

            let idattrs = pg_sys::RelationGetIndexAttrBitmap(
                rel,
                pg_sys::IndexAttrBitmapKind::INDEX_ATTR_BITMAP_IDENTITY_KEY,
            );
            let desc = (*rel).rd_att;
            let natts = (*desc).natts as usize;
            let attrs = attributes(desc);
            let mut columns = Vec::with_capacity(natts);
            let mut types = options.include_types.then(|| b",\"types\":{".to_vec());
            let mut first_type = true;
            for (i, att) in attrs.iter().enumerate() {
                let name = CStr::from_ptr(att.attname.data.as_ptr());
                let mut key = Vec::with_capacity(name.to_bytes().len() + 3);
                json::write_str(&mut key, name.to_bytes());
                let name_json = key.clone();
                key.push(b':');
                let dropped = att.attisdropped;
                let attnum = i as i32 + 1;
                let identity = pg_sys::bms_is_member(
                    attnum - pg_sys::FirstLowInvalidHeapAttributeNumber,
                    idattrs,
                );
                let kind = if dropped {
                    ValueKind::Bool
                } else {
                    ValueKind::classify(att.atttypid, att.atttypmod, att.attcollation, mcxt)
                };
                if let (Some(t), false) = (types.as_mut(), dropped) {
                    if !first_type {
                        t.push(b',');
                    }
                    first_type = false;
                    t.extend_from_slice(&key);
                    json::write_str(t, type_name(att).to_bytes());
                }
                columns.push(Column {
                    key,
                    name_json,
                    dropped,
                    varlena: att.attlen == -1,
                    identity,
                    kind,
                });
            }
            if let Some(t) = types.as_mut() {
                t.push(b'}');
            }
            pg_sys::bms_free(idattrs);

            RelInfo {
                allowed,
                own,
                names,
                qualified,
                replident: form.relreplident as u8,
                columns,
                types,
                mcxt,
            }
        }
    }
}

/// A column's type: built-in types by their SQL name, others
/// schema-qualified so the name does not depend on the session's
/// search_path.
///
/// # Safety
/// `att` is an attribute of an open relation, in a transaction (the
/// catalog is read); the name is allocated in the current memory context.
unsafe fn type_name(att: &pg_sys::FormData_pg_attribute) -> &CStr {
    // SAFETY: the caller's contract; both functions return a palloc'd,
    // NUL-terminated string that lives as long as the memory context.
    unsafe {
        let name = if att.atttypid.to_u32() < pg_sys::FirstNormalObjectId {
            pg_sys::format_type_with_typemod(att.atttypid, att.atttypmod)
        } else {
            pg_sys::format_type_extended(
                att.atttypid,
                att.atttypmod,
                (pg_sys::FORMAT_TYPE_TYPEMOD_GIVEN | pg_sys::FORMAT_TYPE_FORCE_QUALIFY) as u16,
            )
        };
        CStr::from_ptr(name)
    }
}

/// The attributes of a tuple descriptor, in column order.
///
/// # Safety
/// `desc` must be a valid tuple descriptor that outlives `'a`.
unsafe fn attributes<'a>(desc: pg_sys::TupleDesc) -> &'a [pg_sys::FormData_pg_attribute] {
    // SAFETY: desc is valid per the contract.
    let natts = unsafe { (*desc).natts } as usize;
    #[cfg(any(feature = "pg15", feature = "pg16", feature = "pg17"))]
    // SAFETY: before PostgreSQL 18 the attributes are the descriptor's
    // trailing array of natts entries.
    let attrs = unsafe { (*desc).attrs.as_slice(natts) };
    #[cfg(feature = "pg18")]
    let attrs = if natts == 0 {
        &[]
    } else {
        // SAFETY: PostgreSQL 18 keeps the natts attributes in one array after
        // the compact ones; TupleDescAttr(desc, 0) points at its first entry.
        unsafe { std::slice::from_raw_parts(pg_sys::TupleDescAttr(desc, 0), natts) }
    };
    attrs
}
