//! A live subscription admitted, whichever form it came in (a websocket
//! URL, read before the upgrade is answered, or the client's first frame):
//! `walcast_core::requests::Subscription` reads both forms by the same
//! rules, and [`admit`] checks it against the catalog, `--tables`, the
//! user's rules and the uploaded filters, and plans its snapshot.

use crate::auth::Grant;
use crate::backfill::driver::{plan_for, Plan, PlanError};
use crate::catalog::Catalog;
use crate::delivery::{self, Admitted};
use crate::filter::{FilterInstance, Filters};
use crate::query::Query;
use crate::refusal::Refusal;
use walcast_core::requests::Subscription;
use walcast_format::{Position, TablePattern};

/// A subscription as the user may have it.
pub struct Subscribed {
    /// Narrowed by the user's rules.
    pub query: Option<Query>,
    pub filter: Option<FilterInstance>,
    pub after: Option<Position>,
    /// What `snapshot` reads first.
    pub plan: Option<Plan>,
}

/// What a subscription is admitted against: the catalog, `--tables` and
/// the uploaded filters.
pub struct Admission<'a> {
    pub catalog: &'a Catalog,
    pub tables: Option<&'a [TablePattern]>,
    pub filters: &'a Filters,
}

/// Admits `sub` for the user of `grant`.
pub async fn admit(
    with: Admission<'_>,
    grant: &Grant,
    sub: Subscription,
) -> Result<Subscribed, Refusal> {
    let Admitted { query, filter } =
        delivery::admit(with.catalog, with.tables, grant, with.filters, sub.choice).await?;
    let plan = match (&query, sub.snapshot) {
        (Some(q), true) => Some(plan_for(with.catalog, q).await.map_err(snapshot_refused)?),
        _ => None,
    };
    Ok(Subscribed {
        query,
        filter,
        after: sub.after,
        plan,
    })
}

/// A snapshot that cannot be planned: the table's fault (400), or the
/// catalog's (503).
fn snapshot_refused(e: PlanError) -> Refusal {
    let refusal = match &e {
        PlanError::Catalog(_) => Refusal::unavailable(e.to_string()),
        PlanError::NoTable(_) | PlanError::Refused(_) => Refusal::invalid(e.to_string()),
    };
    refusal.code("SNAPSHOT_REFUSED")
}
