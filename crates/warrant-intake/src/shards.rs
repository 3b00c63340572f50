//! The projector, as the shards that fold the log's partitions; one
//! projector of the whole log is the case of one shard that owns them all.
//!
//! Each shard folds some partitions of the log (`warrant-projector
//! --partitions`). A question about one instance goes to the shard that
//! owns the instance's partition: the partition its append landed in when
//! intake knows it (a claim's entry), else the partition the producer's
//! partitioner gives its id (`warrant_authority::instance_partition`, the
//! same murmur2 intake's producer uses). Listings ask every shard and merge
//! the pages by instance id (the due deadlines by deadline), so a cursor
//! means what it means on one.
//!
//! Which shard owns what is asked of the shards themselves (`GET /v1/shard`)
//! rather than configured twice: on first use, again after a shard answers
//! 421 `not_owner` (it was restarted with other partitions), and after every
//! listing, which no shard can refuse with a 421 and which would otherwise
//! come back short without a word. Every partition of the log must be owned
//! by exactly one shard; until it is, every routed call and every listing
//! fails with [`ProjectorError::Sharding`] (intake answers 503), never a
//! guess or a partial page.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use warrant_authority::{
    instance_partition, ranges, EntryView, ExecutionRecord, InstanceFacts, LogPosition, StatusName,
};

use crate::log::BoxFuture;
use crate::projector::{
    cursor_of, parse_cursor, DeadlinePage, HttpProjector, Page, Projector, ProjectorError,
    ShardInfo,
};

/// How long a failed discovery is remembered before the shards are asked
/// again: a shard that does not answer must not cost every request a
/// connect timeout.
const RETRY_DISCOVERY: Duration = Duration::from_millis(500);

/// A discovery that failed faster than this (connection refused, a shard
/// answering with an error) is not remembered: asking again costs little,
/// and a projector that has just come up is used at once instead of
/// RETRY_DISCOVERY later.
const SLOW_DISCOVERY: Duration = Duration::from_millis(100);

/// Which shard owns each partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routes {
    /// Shard index by partition (0 to the log's partition count).
    owners: Vec<usize>,
}

impl Routes {
    /// Check that the shards' answers cover every partition of one log
    /// exactly once; `urls` name the shards in messages.
    pub fn from_shards(urls: &[&str], infos: &[ShardInfo]) -> Result<Routes, String> {
        let (Some(first_url), Some(first)) = (urls.first(), infos.first()) else {
            return Err("no projector shards".to_owned());
        };
        let mut log_partitions = None;
        for (url, info) in urls.iter().zip(infos) {
            if info.topic != first.topic {
                return Err(format!(
                    "{url} folds topic {}, {first_url} folds {}",
                    info.topic, first.topic
                ));
            }
            let (Some(_), Some(count)) = (&info.owned, info.log_partitions) else {
                return Err(format!(
                    "{url} has not resolved its partitions yet (is it connected to Kafka?)"
                ));
            };
            match log_partitions {
                None => log_partitions = Some(count),
                Some(seen) if seen != count => {
                    return Err(format!(
                        "{url} sees {count} partitions of the log, {first_url} sees {seen}"
                    ))
                }
                Some(_) => {}
            }
        }
        let count = log_partitions.unwrap_or(0);
        let mut owners: Vec<Vec<usize>> = vec![Vec::new(); usize::try_from(count).unwrap_or(0)];
        for (shard, info) in infos.iter().enumerate() {
            for partition in info.owned.iter().flatten() {
                match usize::try_from(*partition)
                    .ok()
                    .and_then(|p| owners.get_mut(p))
                {
                    Some(owner) => owner.push(shard),
                    None => {
                        return Err(format!(
                            "{} owns partition {partition}, which a log of {count} does not have",
                            urls[shard]
                        ))
                    }
                }
            }
        }
        let unowned: Vec<i32> = (0..count)
            .zip(&owners)
            .filter(|(_, owner)| owner.is_empty())
            .map(|(p, _)| p)
            .collect();
        if !unowned.is_empty() {
            return Err(format!(
                "no shard owns partitions {} of {count} (give intake every shard's URL)",
                ranges(&unowned)
            ));
        }
        if let Some((partition, owner)) = (0..count).zip(&owners).find(|(_, o)| o.len() > 1) {
            let names: Vec<&str> = owner.iter().map(|shard| urls[*shard]).collect();
            return Err(format!(
                "partition {partition} is owned by {}: each partition needs exactly one shard",
                names.join(" and ")
            ));
        }
        Ok(Routes {
            owners: owners.into_iter().map(|owner| owner[0]).collect(),
        })
    }

    /// The log's partition count.
    pub fn log_partitions(&self) -> i32 {
        i32::try_from(self.owners.len()).unwrap_or(i32::MAX)
    }

    fn owner_of_partition(&self, partition: i32) -> Option<usize> {
        usize::try_from(partition)
            .ok()
            .and_then(|p| self.owners.get(p).copied())
    }

    /// The shard of `instance_id`, by the partition its key is produced to.
    pub fn owner_of_instance(&self, instance_id: &str) -> Option<usize> {
        self.owner_of_partition(instance_partition(instance_id, self.log_partitions())?)
    }
}

/// What a routed call is about.
#[derive(Debug, Clone, Copy)]
enum Route<'a> {
    Instance(&'a str),
    Partition(i32),
}

#[derive(Debug, Default)]
struct Known {
    routes: Option<Arc<Routes>>,
    /// The last discovery that failed, and why.
    failed: Option<(Instant, String)>,
}

/// The projector, as one or several shards.
#[derive(Debug)]
pub struct ShardedProjector {
    shards: Vec<HttpProjector>,
    known: Mutex<Known>,
    /// One discovery at a time; the others wait for its answer.
    discovering: tokio::sync::Mutex<()>,
}

impl ShardedProjector {
    pub fn new(urls: &[String], request_timeout: Duration) -> Result<Self, ProjectorError> {
        let shards = urls
            .iter()
            .map(|url| HttpProjector::new(url, request_timeout))
            .collect::<Result<Vec<_>, _>>()?;
        if shards.is_empty() {
            return Err(ProjectorError::Sharding("no projector URL".to_owned()));
        }
        for (n, shard) in shards.iter().enumerate() {
            if shards[..n].iter().any(|other| other.base() == shard.base()) {
                return Err(ProjectorError::Sharding(format!(
                    "{} is given twice",
                    shard.base()
                )));
            }
        }
        Ok(ShardedProjector {
            shards,
            known: Mutex::new(Known::default()),
            discovering: tokio::sync::Mutex::new(()),
        })
    }

    pub fn shards(&self) -> &[HttpProjector] {
        &self.shards
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Which shard owns what, asked of the shards if not known.
    pub async fn routes(&self) -> Result<Arc<Routes>, ProjectorError> {
        if let Some(routes) = self.cached()? {
            return Ok(routes);
        }
        let _one = self.discovering.lock().await;
        // Another caller may have found them while this one waited.
        if let Some(routes) = self.cached()? {
            return Ok(routes);
        }
        let started = Instant::now();
        let discovered = self.discover().await;
        self.learn(discovered, started.elapsed())
    }

    /// Ask every shard what it owns now, whatever is known.
    async fn rediscover(&self) -> Result<Arc<Routes>, ProjectorError> {
        let _one = self.discovering.lock().await;
        let started = Instant::now();
        let discovered = self.discover().await;
        self.learn(discovered, started.elapsed())
    }

    /// Remember what a discovery found: routes, or why there are none.
    fn learn(
        &self,
        discovered: Result<Routes, String>,
        took: Duration,
    ) -> Result<Arc<Routes>, ProjectorError> {
        let mut known = self.known();
        match discovered {
            Ok(routes) => {
                if known.routes.as_deref() == Some(&routes) {
                    // Unchanged: keep the one every caller already holds.
                    if let Some(same) = &known.routes {
                        return Ok(same.clone());
                    }
                }
                let routes = Arc::new(routes);
                tracing::info!(
                    shards = self.shards.len(),
                    log_partitions = routes.log_partitions(),
                    "projector shards cover every partition"
                );
                known.routes = Some(routes.clone());
                known.failed = None;
                Ok(routes)
            }
            Err(reason) => {
                tracing::warn!(reason = %reason, "cannot route to the projector shards");
                known.routes = None;
                known.failed = (took >= SLOW_DISCOVERY).then(|| (Instant::now(), reason.clone()));
                Err(ProjectorError::Sharding(reason))
            }
        }
    }

    fn cached(&self) -> Result<Option<Arc<Routes>>, ProjectorError> {
        let known = self.known();
        if let Some(routes) = &known.routes {
            return Ok(Some(routes.clone()));
        }
        match &known.failed {
            Some((at, reason)) if at.elapsed() < RETRY_DISCOVERY => {
                Err(ProjectorError::Sharding(reason.clone()))
            }
            _ => Ok(None),
        }
    }

    /// Forget the routes: the next call asks the shards again.
    fn forget(&self) {
        let mut known = self.known();
        known.routes = None;
        known.failed = None;
    }

    async fn discover(&self) -> Result<Routes, String> {
        let mut asked = tokio::task::JoinSet::new();
        for (n, shard) in self.shards.iter().enumerate() {
            let shard = shard.clone();
            asked.spawn(async move { (n, shard.shard().await) });
        }
        let mut infos: Vec<Option<ShardInfo>> = vec![None; self.shards.len()];
        while let Some(joined) = asked.join_next().await {
            let (n, info) = joined.map_err(|_| "a discovery task failed".to_owned())?;
            infos[n] = Some(info.map_err(|error| match error {
                ProjectorError::Sharding(reason) => reason,
                error => crate::error_chain(&error),
            })?);
        }
        let urls: Vec<&str> = self.shards.iter().map(HttpProjector::base).collect();
        let infos: Vec<ShardInfo> = infos.into_iter().flatten().collect();
        Routes::from_shards(&urls, &infos)
    }

    /// The shard that owns `route`'s partition.
    async fn shard_for(&self, route: Route<'_>) -> Result<&HttpProjector, ProjectorError> {
        let routes = self.routes().await?;
        let owner = match route {
            Route::Instance(id) => routes.owner_of_instance(id),
            Route::Partition(partition) => routes.owner_of_partition(partition),
        };
        owner.and_then(|n| self.shards.get(n)).ok_or_else(|| {
            ProjectorError::Sharding(format!(
                "{route:?} is in no partition of a log of {}",
                routes.log_partitions()
            ))
        })
    }

    /// Ask the owner of `route`; if it says it is not (it was restarted
    /// with other partitions), learn the routes again and ask once more.
    async fn ask<'a, T>(
        &'a self,
        route: Route<'a>,
        call: impl Fn(&'a HttpProjector) -> BoxFuture<'a, Result<T, ProjectorError>>,
    ) -> Result<T, ProjectorError> {
        let mut result = call(self.shard_for(route).await?).await;
        if matches!(result, Err(ProjectorError::NotOwner { .. })) {
            self.forget();
            result = call(self.shard_for(route).await?).await;
            if matches!(result, Err(ProjectorError::NotOwner { .. })) {
                self.forget();
            }
        }
        result
    }
}

/// Merge one page per shard, each in id order after the same cursor, into
/// the first `limit` of their union: more remain when a shard said so or
/// the union was cut, and the next page starts after the last one shown.
pub fn merge_pages(pages: Vec<Page>, limit: usize) -> Page {
    let more_in_a_shard = pages.iter().any(|page| page.next.is_some());
    let mut instances: Vec<_> = pages.into_iter().flat_map(|page| page.instances).collect();
    instances.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    instances.dedup_by(|a, b| a.instance_id == b.instance_id);
    let cut = instances.len() > limit;
    instances.truncate(limit);
    let next = if cut || more_in_a_shard {
        instances.last().map(|i| i.instance_id.clone())
    } else {
        None
    };
    Page { instances, next }
}

/// Merge one page of due deadlines per shard, each in deadline order after
/// the same cursor. A shard's `next` says it has examined everything up to
/// it (its page may be short: the projector leaves out instances that moved
/// on), so the union is complete only up to the smallest `next` of the
/// shards that have more: the merged page keeps what sorts up to it, at
/// most `limit`, and resumes after the last line kept or at that bound.
pub fn merge_deadline_pages(
    pages: Vec<DeadlinePage>,
    limit: usize,
) -> Result<DeadlinePage, ProjectorError> {
    let mut bound = None;
    for next in pages.iter().filter_map(|page| page.next.as_deref()) {
        let key = parse_cursor(next).ok_or_else(|| {
            ProjectorError::Sharding(format!("a shard answered the cursor {next:?}"))
        })?;
        if bound.as_ref().is_none_or(|bound| key < *bound) {
            bound = Some(key);
        }
    }
    let mut deadlines: Vec<_> = pages.into_iter().flat_map(|page| page.deadlines).collect();
    deadlines.sort_by_key(|due| due.key());
    deadlines.dedup_by_key(|due| due.key());
    if let Some(bound) = &bound {
        deadlines.retain(|due| due.key() <= *bound);
    }
    let cut = deadlines.len() > limit;
    deadlines.truncate(limit);
    let next = if cut {
        deadlines.last().map(|due| due.cursor())
    } else {
        bound.as_ref().map(cursor_of)
    };
    Ok(DeadlinePage { deadlines, next })
}

impl Projector for ShardedProjector {
    fn record<'a>(
        &'a self,
        instance_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<ExecutionRecord>, ProjectorError>> {
        Box::pin(self.ask(Route::Instance(instance_id), move |shard| {
            shard.record(instance_id)
        }))
    }

    fn facts<'a>(
        &'a self,
        instance_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<InstanceFacts>, ProjectorError>> {
        Box::pin(self.ask(Route::Instance(instance_id), move |shard| {
            shard.facts(instance_id)
        }))
    }

    fn wait_record<'a>(
        &'a self,
        instance_id: &'a str,
        after_seq: u64,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Option<ExecutionRecord>, ProjectorError>> {
        Box::pin(self.ask(Route::Instance(instance_id), move |shard| {
            shard.wait_record(instance_id, after_seq, wait)
        }))
    }

    fn entry<'a>(
        &'a self,
        instance_id: &'a str,
        position: LogPosition,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Option<EntryView>, ProjectorError>> {
        // The append said where the record is: that partition's shard folds it.
        Box::pin(
            self.ask(Route::Partition(position.partition), move |shard| {
                shard.entry(instance_id, position, wait)
            }),
        )
    }

    fn list<'a>(
        &'a self,
        status: StatusName,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Page, ProjectorError>> {
        Box::pin(self.whole(move || {
            Box::pin(async move {
                let pages = self
                    .ask_every_shard(|shard| {
                        let after = after.map(str::to_owned);
                        async move { shard.list(status, after.as_deref(), limit).await }
                    })
                    .await?;
                Ok(merge_pages(pages, limit))
            })
        }))
    }

    fn due<'a>(
        &'a self,
        due_before: i64,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<DeadlinePage, ProjectorError>> {
        // A sweep without a shard's deadlines would never expire its
        // instances, without a word: the same whole-or-nothing as listings.
        Box::pin(self.whole(move || {
            Box::pin(async move {
                let pages = self
                    .ask_every_shard(|shard| {
                        let after = after.map(str::to_owned);
                        async move { shard.due(due_before, after.as_deref(), limit).await }
                    })
                    .await?;
                merge_deadline_pages(pages, limit)
            })
        }))
    }
}

impl ShardedProjector {
    /// A listing from every shard, or none: a listing missing a partition's
    /// instances would look complete (the sweeper would never expire them,
    /// reviewers would never see them). No listing call says 421, so
    /// ownership is asked again after every listing: the pages are only
    /// whole if the shards still cover every partition, as they did when
    /// the listing began (a shard restarted with fewer partitions answers a
    /// smaller page).
    async fn whole<'a, T>(
        &'a self,
        listing: impl Fn() -> BoxFuture<'a, Result<T, ProjectorError>>,
    ) -> Result<T, ProjectorError> {
        let mut routes = self.routes().await?;
        for _ in 0..2 {
            let page = listing().await?;
            let now = self.rediscover().await?;
            if now == routes {
                return Ok(page);
            }
            // Some pages may predate the change: list again.
            routes = now;
        }
        Err(ProjectorError::Sharding(
            "the shards' partitions changed during two listings in a row".to_owned(),
        ))
    }

    /// Ask every shard at once; each answer, in no particular order.
    async fn ask_every_shard<T, F>(
        &self,
        ask: impl Fn(HttpProjector) -> F,
    ) -> Result<Vec<T>, ProjectorError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, ProjectorError>> + Send + 'static,
    {
        let mut asked = tokio::task::JoinSet::new();
        for shard in &self.shards {
            asked.spawn(ask(shard.clone()));
        }
        let mut answers = Vec::with_capacity(self.shards.len());
        while let Some(joined) = asked.join_next().await {
            let answer =
                joined.map_err(|_| ProjectorError::Sharding("a listing task failed".to_owned()))?;
            answers.push(answer?);
        }
        Ok(answers)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use warrant_schema::DeadlineKind;

    use super::*;
    use crate::projector::{DeadlineKey, DueDeadline, InstanceSummary};

    fn info(owned: &[i32], of: i32) -> ShardInfo {
        ShardInfo {
            topic: "warrant.log".to_owned(),
            owned: Some(owned.to_vec()),
            log_partitions: Some(of),
        }
    }

    const URLS: [&str; 2] = ["http://a:8081", "http://b:8081"];

    #[test]
    fn routes_need_every_partition_owned_exactly_once() {
        let routes =
            Routes::from_shards(&URLS, &[info(&[0, 1, 2], 6), info(&[3, 4, 5], 6)]).unwrap();
        assert_eq!(routes.log_partitions(), 6);
        assert_eq!(routes.owner_of_partition(2), Some(0));
        assert_eq!(routes.owner_of_partition(3), Some(1));
        assert_eq!(routes.owner_of_partition(6), None);
        assert_eq!(routes.owner_of_instance("quarantine-4"), Some(1));
        let id = "6f1c2b9e-4d0a-4c7e-9a51-0d2f3b8c7e11";
        let partition = instance_partition(id, 6).unwrap();
        assert_eq!(
            routes.owner_of_instance(id),
            Some(usize::from(partition >= 3))
        );

        for (infos, says) in [
            (
                vec![info(&[0, 1], 6), info(&[3, 4, 5], 6)],
                "no shard owns partitions 2 of 6",
            ),
            (
                vec![info(&[0, 1, 2, 3], 6), info(&[3, 4, 5], 6)],
                "partition 3 is owned by http://a:8081 and http://b:8081",
            ),
            (
                vec![info(&[0, 1, 2], 6), info(&[3, 4, 5], 7)],
                "sees 7 partitions of the log",
            ),
            (
                vec![info(&[0, 1, 2, 9], 6), info(&[3, 4, 5], 6)],
                "owns partition 9",
            ),
            (
                vec![
                    info(&[0, 1, 2], 6),
                    ShardInfo {
                        topic: "warrant.log".to_owned(),
                        owned: None,
                        log_partitions: None,
                    },
                ],
                "http://b:8081 has not resolved its partitions",
            ),
            (
                vec![
                    info(&[0, 1, 2], 6),
                    ShardInfo {
                        topic: "other.log".to_owned(),
                        ..info(&[3, 4, 5], 6)
                    },
                ],
                "folds topic other.log",
            ),
        ] {
            let error = Routes::from_shards(&URLS, &infos).unwrap_err();
            assert!(error.contains(says), "{error}");
        }
    }

    fn page(ids: &[&str], next: Option<&str>) -> Page {
        Page {
            instances: ids
                .iter()
                .map(|id| InstanceSummary {
                    instance_id: (*id).to_owned(),
                    status: Some(StatusName::AwaitingDecision),
                    head_hash: None,
                    entries: 1,
                })
                .collect(),
            next: next.map(str::to_owned),
        }
    }

    fn ids(page: &Page) -> Vec<&str> {
        page.instances
            .iter()
            .map(|i| i.instance_id.as_str())
            .collect()
    }

    #[test]
    fn pages_merge_by_id_and_the_cursor_is_the_last_shown() {
        // Shard a has more after c; b has two.
        let merged = merge_pages(
            vec![page(&["a", "c", "e"], Some("e")), page(&["b", "d"], None)],
            3,
        );
        assert_eq!(ids(&merged), ["a", "b", "c"]);
        assert_eq!(merged.next.as_deref(), Some("c"));
        // Everything fits, but a shard had more: still a next page.
        let merged = merge_pages(vec![page(&["a", "c", "e"], Some("e")), page(&[], None)], 3);
        assert_eq!(ids(&merged), ["a", "c", "e"]);
        assert_eq!(merged.next.as_deref(), Some("e"));
        // The end of every shard: no next.
        let merged = merge_pages(vec![page(&["a"], None), page(&["b"], None)], 3);
        assert_eq!(merged.next, None);
        let merged = merge_pages(vec![page(&[], None), page(&[], None)], 3);
        assert_eq!((merged.instances.len(), merged.next), (0, None));
    }

    fn due(deadline: i64, id: &str, kind: DeadlineKind) -> DueDeadline {
        DueDeadline {
            instance_id: id.to_owned(),
            kind,
            deadline,
            status: Some(match kind {
                DeadlineKind::Decision => StatusName::AwaitingDecision,
                DeadlineKind::Grant => StatusName::Authorized,
            }),
            entries: 1,
        }
    }

    fn due_page(lines: &[(i64, &str)], next: Option<(i64, &str)>) -> DeadlinePage {
        DeadlinePage {
            deadlines: lines
                .iter()
                .map(|(at, id)| due(*at, id, DeadlineKind::Decision))
                .collect(),
            next: next.map(|(at, id)| cursor_of(&(at, id.to_owned(), DeadlineKind::Decision))),
        }
    }

    fn due_ids(page: &DeadlinePage) -> Vec<&str> {
        page.deadlines
            .iter()
            .map(|d| d.instance_id.as_str())
            .collect()
    }

    #[test]
    fn due_pages_merge_by_deadline_up_to_the_first_shard_bound() {
        // a examined up to (20, a2) and has more; b is done.
        let merged = merge_deadline_pages(
            vec![
                due_page(&[(10, "a1"), (20, "a2")], Some((20, "a2"))),
                due_page(&[(15, "b1"), (30, "b2")], None),
            ],
            10,
        )
        .unwrap();
        assert_eq!(
            due_ids(&merged),
            ["a1", "b1", "a2"],
            "b2 waits for a's next page"
        );
        assert_eq!(
            merged.next,
            Some(cursor_of(&(20, "a2".to_owned(), DeadlineKind::Decision)))
        );
        // A shard whose page was all left out still bounds the merge.
        let merged = merge_deadline_pages(
            vec![
                due_page(&[], Some((12, "a9"))),
                due_page(&[(11, "b1"), (13, "b2")], None),
            ],
            10,
        )
        .unwrap();
        assert_eq!(due_ids(&merged), ["b1"]);
        assert_eq!(
            merged.next,
            Some(cursor_of(&(12, "a9".to_owned(), DeadlineKind::Decision)))
        );
        // Cut at the limit: resume after the last line shown.
        let merged = merge_deadline_pages(
            vec![
                due_page(&[(1, "a1"), (3, "a3")], None),
                due_page(&[(2, "b2"), (4, "b4")], None),
            ],
            3,
        )
        .unwrap();
        assert_eq!(due_ids(&merged), ["a1", "b2", "a3"]);
        assert_eq!(
            merged.next,
            Some(cursor_of(&(3, "a3".to_owned(), DeadlineKind::Decision)))
        );
        // Every shard done: no next.
        let merged =
            merge_deadline_pages(vec![due_page(&[(1, "a1")], None), due_page(&[], None)], 3)
                .unwrap();
        assert_eq!(
            (due_ids(&merged), merged.next.as_deref()),
            (vec!["a1"], None)
        );
        // A cursor that is not one is refused, not guessed past.
        let mut bad = due_page(&[], None);
        bad.next = Some("later".to_owned());
        assert!(matches!(
            merge_deadline_pages(vec![bad], 3),
            Err(ProjectorError::Sharding(_))
        ));
    }

    /// One shard's index as `GET /v1/deadlines` pages it: up to `limit`
    /// due entries after the cursor are examined, those whose instance
    /// moved on (`false`) are left out, and `next` is the last examined
    /// while more are due.
    fn shard_page(
        index: &std::collections::BTreeMap<DeadlineKey, bool>,
        due_before: i64,
        after: Option<&str>,
        limit: usize,
    ) -> DeadlinePage {
        let after = after.map(|a| parse_cursor(a).unwrap());
        let mut due = index
            .iter()
            .filter(|(key, _)| after.as_ref().is_none_or(|after| *key > after))
            .take_while(|(key, _)| key.0 <= due_before);
        let examined: Vec<_> = due.by_ref().take(limit).collect();
        let more = due.next().is_some();
        DeadlinePage {
            next: examined
                .last()
                .filter(|_| more)
                .map(|(key, _)| cursor_of(key)),
            deadlines: examined
                .into_iter()
                .filter(|(_, applies)| **applies)
                .map(|((deadline, id, kind), _)| DueDeadline {
                    instance_id: id.clone(),
                    kind: *kind,
                    deadline: *deadline,
                    status: Some(StatusName::AwaitingDecision),
                    entries: 1,
                })
                .collect(),
        }
    }

    proptest::proptest! {
        /// Paging the merge of every shard's pages the way the sweeper does
        /// serves every due entry that applies exactly once, in order, and
        /// ends: whatever the limit, ties of deadline across shards, pages
        /// short or empty from left-out entries, and one instance in two
        /// shards (a hostile producer's copy in another partition).
        #[test]
        fn paging_merged_shards_serves_each_due_entry_once(
            shards in proptest::collection::vec(
                proptest::collection::btree_map(
                    (0i64..6, proptest::sample::select(vec!["a", "b", "c", "d", "e", "f", "g"]),
                        proptest::bool::ANY),
                    proptest::bool::weighted(0.7),
                    0..25,
                ),
                1..4,
            ),
            limit in 1usize..6,
            due_before in 0i64..7,
        ) {
            let shards: Vec<std::collections::BTreeMap<DeadlineKey, bool>> = shards
                .into_iter()
                .map(|index| {
                    index
                        .into_iter()
                        .map(|((at, id, grant), applies)| {
                            let kind = if grant { DeadlineKind::Grant } else { DeadlineKind::Decision };
                            ((at, id.to_owned(), kind), applies)
                        })
                        .collect()
                })
                .collect();
            let mut expected: Vec<DeadlineKey> = shards
                .iter()
                .flat_map(|index| index.iter())
                .filter(|(key, applies)| **applies && key.0 <= due_before)
                .map(|(key, _)| key.clone())
                .collect();
            expected.sort();
            expected.dedup();
            let mut served = Vec::new();
            let mut after: Option<String> = None;
            let mut pages = 0;
            loop {
                pages += 1;
                proptest::prop_assert!(pages < 500, "paging does not end");
                let page = merge_deadline_pages(
                    shards
                        .iter()
                        .map(|index| shard_page(index, due_before, after.as_deref(), limit))
                        .collect(),
                    limit,
                )
                .unwrap();
                proptest::prop_assert!(page.deadlines.len() <= limit);
                served.extend(page.deadlines.iter().map(DueDeadline::key));
                match page.next {
                    Some(next) if Some(&next) != after.as_ref() => after = Some(next),
                    Some(_) | None => break,
                }
            }
            proptest::prop_assert_eq!(served, expected);
        }
    }

    /// A projector shard over HTTP that knows no instance: it answers 404
    /// for its own partitions, 421 for the others, and notes who asked.
    /// Its deadline index is `due`.
    #[derive(Default)]
    struct FakeShard {
        owned: Mutex<Vec<i32>>,
        asked: Mutex<Vec<String>>,
        listed: Vec<&'static str>,
        due: Vec<DueDeadline>,
    }

    async fn serve(shard: Arc<FakeShard>) -> String {
        use axum::extract::{Path, Query, State};
        use axum::http::StatusCode;
        use axum::routing::get;
        use axum::Json;

        type Shared = State<Arc<FakeShard>>;
        async fn info(State(shard): Shared) -> Json<serde_json::Value> {
            let owned = shard.owned.lock().unwrap().clone();
            Json(serde_json::json!({"topic": "t", "owned": owned, "log_partitions": 6}))
        }
        fn answer(shard: &FakeShard, partition: i32, what: String) -> StatusCode {
            shard.asked.lock().unwrap().push(what);
            if shard.owned.lock().unwrap().contains(&partition) {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::MISDIRECTED_REQUEST
            }
        }
        async fn record(State(shard): Shared, Path(id): Path<String>) -> StatusCode {
            answer(&shard, instance_partition(&id, 6).unwrap(), id)
        }
        async fn entry(
            State(shard): Shared,
            Path(id): Path<String>,
            Query(query): Query<std::collections::HashMap<String, String>>,
        ) -> StatusCode {
            let partition = query["partition"].parse().unwrap();
            answer(&shard, partition, format!("{id}@{partition}"))
        }
        async fn list(State(shard): Shared) -> Json<serde_json::Value> {
            Json(serde_json::to_value(page(&shard.listed, None)).unwrap())
        }
        /// As the projector pages its index.
        async fn deadlines(
            State(shard): Shared,
            Query(query): Query<std::collections::HashMap<String, String>>,
        ) -> Json<serde_json::Value> {
            let due_before: i64 = query["due_before"].parse().unwrap();
            let limit: usize = query["limit"].parse().unwrap();
            let after = query.get("after").map(|a| parse_cursor(a).unwrap());
            let mut lines: Vec<DueDeadline> = shard
                .due
                .iter()
                .filter(|d| d.deadline <= due_before)
                .filter(|d| after.as_ref().is_none_or(|after| d.key() > *after))
                .cloned()
                .collect();
            lines.sort_by_key(DueDeadline::key);
            let next = (lines.len() > limit).then(|| lines[limit - 1].cursor());
            lines.truncate(limit);
            Json(
                serde_json::to_value(DeadlinePage {
                    deadlines: lines,
                    next,
                })
                .unwrap(),
            )
        }
        let app = axum::Router::new()
            .route("/v1/shard", get(info))
            .route("/v1/instances", get(list))
            .route("/v1/deadlines", get(deadlines))
            .route("/v1/instances/{id}", get(record))
            .route("/v1/instances/{id}/entries", get(entry))
            .with_state(shard);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    fn id_in(partition: i32) -> String {
        (0u64..)
            .map(|n| format!("00000000-0000-4000-8000-{n:012x}"))
            .find(|id| instance_partition(id, 6) == Some(partition))
            .unwrap()
    }

    fn asked(shard: &FakeShard) -> Vec<String> {
        std::mem::take(&mut *shard.asked.lock().unwrap())
    }

    #[tokio::test]
    async fn questions_go_to_the_owner_and_a_moved_partition_is_found_again() {
        let a = Arc::new(FakeShard {
            owned: Mutex::new(vec![0, 1, 2]),
            listed: vec!["a1", "a3"],
            ..FakeShard::default()
        });
        let b = Arc::new(FakeShard {
            owned: Mutex::new(vec![3, 4, 5]),
            listed: vec!["a2"],
            ..FakeShard::default()
        });
        let urls = vec![serve(a.clone()).await, serve(b.clone()).await];
        let projector = ShardedProjector::new(&urls, Duration::from_secs(5)).unwrap();
        for partition in 0..6 {
            let id = id_in(partition);
            assert!(projector.record(&id).await.unwrap().is_none());
            let (owner, other) = if partition < 3 { (&a, &b) } else { (&b, &a) };
            assert_eq!(asked(owner), vec![id.clone()], "partition {partition}");
            assert!(asked(other).is_empty(), "partition {partition}");
        }
        // A claim's entry goes by the position its append landed in.
        let position = LogPosition {
            partition: 4,
            offset: 0,
        };
        let found = projector
            .entry(&id_in(0), position, Duration::from_millis(1))
            .await
            .unwrap();
        assert!(found.is_none());
        assert_eq!(asked(&b), [format!("{}@4", id_in(0))]);
        let page = projector
            .list(StatusName::AwaitingDecision, None, 10)
            .await
            .unwrap();
        assert_eq!(ids(&page), ["a1", "a2", "a3"]);

        // The shards restart with each other's partitions: the old owner's
        // 421 makes intake ask the shards again, and the new owner answers.
        *a.owned.lock().unwrap() = vec![3, 4, 5];
        *b.owned.lock().unwrap() = vec![0, 1, 2];
        let id = id_in(5);
        assert!(projector.record(&id).await.unwrap().is_none());
        assert_eq!(asked(&b), vec![id.clone()]);
        assert_eq!(asked(&a), [id]);

        // A partition nobody owns: refused, naming it, never guessed.
        *b.owned.lock().unwrap() = vec![0, 1];
        let error = projector.record(&id_in(2)).await.unwrap_err();
        assert!(matches!(error, ProjectorError::Sharding(_)), "{error:?}");
        assert!(
            error
                .to_string()
                .contains("no shard owns partitions 2 of 6"),
            "{error}"
        );
        // And a listing is refused too rather than missing a shard.
        assert!(projector
            .list(StatusName::AwaitingDecision, None, 10)
            .await
            .is_err());
    }

    async fn listing(projector: &ShardedProjector) -> Result<Vec<String>, ProjectorError> {
        let page = projector
            .list(StatusName::AwaitingDecision, None, 10)
            .await?;
        Ok(ids(&page).into_iter().map(str::to_owned).collect())
    }

    #[tokio::test]
    async fn a_listing_notices_a_shard_that_no_longer_owns_its_partitions() {
        let a = Arc::new(FakeShard {
            owned: Mutex::new(vec![0, 1, 2]),
            listed: vec!["a1"],
            ..FakeShard::default()
        });
        let b = Arc::new(FakeShard {
            owned: Mutex::new(vec![3, 4, 5]),
            listed: vec!["b1"],
            ..FakeShard::default()
        });
        let urls = vec![serve(a.clone()).await, serve(b.clone()).await];
        let projector = ShardedProjector::new(&urls, Duration::from_secs(5)).unwrap();
        assert_eq!(listing(&projector).await.unwrap(), ["a1", "b1"]);

        // Shard a restarts with fewer partitions. No per-instance call is
        // made, so no 421 says so: the listing itself must notice.
        *a.owned.lock().unwrap() = vec![0, 1];
        for _ in 0..3 {
            let error = listing(&projector).await.unwrap_err();
            assert!(matches!(error, ProjectorError::Sharding(_)), "{error:?}");
            assert!(
                error
                    .to_string()
                    .contains("no shard owns partitions 2 of 6"),
                "{error}"
            );
        }
        // And what intake routes by is forgotten with it.
        let error = projector.record(&id_in(2)).await.unwrap_err();
        assert!(matches!(error, ProjectorError::Sharding(_)), "{error:?}");

        // Whole again (once the failed discovery may be retried).
        *a.owned.lock().unwrap() = vec![0, 1, 2];
        tokio::time::sleep(RETRY_DISCOVERY + Duration::from_millis(100)).await;
        assert_eq!(listing(&projector).await.unwrap(), ["a1", "b1"]);

        // The shards swap partitions: still whole, and the new routes are
        // learnt from the listing alone.
        *a.owned.lock().unwrap() = vec![3, 4, 5];
        *b.owned.lock().unwrap() = vec![0, 1, 2];
        assert_eq!(listing(&projector).await.unwrap(), ["a1", "b1"]);
        let id = id_in(0);
        assert!(projector.record(&id).await.unwrap().is_none());
        assert_eq!(asked(&b), [id]);
        assert!(asked(&a).is_empty());
    }

    #[tokio::test]
    async fn one_url_is_a_shard_that_must_own_every_partition() {
        let one = Arc::new(FakeShard {
            owned: Mutex::new(vec![3, 4, 5]),
            listed: vec!["b1"],
            ..FakeShard::default()
        });
        let projector =
            ShardedProjector::new(&[serve(one.clone()).await], Duration::from_secs(5)).unwrap();
        for error in [
            listing(&projector).await.unwrap_err(),
            projector.record(&id_in(4)).await.unwrap_err(),
        ] {
            assert!(matches!(error, ProjectorError::Sharding(_)), "{error:?}");
            assert!(
                error
                    .to_string()
                    .contains("no shard owns partitions 0-2 of 6 (give intake every shard's URL)"),
                "{error}"
            );
        }
        assert!(asked(&one).is_empty(), "nothing is asked of a partial view");

        // A projector of the whole log: as before shards.
        *one.owned.lock().unwrap() = (0..6).collect();
        tokio::time::sleep(RETRY_DISCOVERY + Duration::from_millis(100)).await;
        assert_eq!(listing(&projector).await.unwrap(), ["b1"]);
        for partition in 0..6 {
            assert!(projector.record(&id_in(partition)).await.unwrap().is_none());
        }
        assert_eq!(asked(&one).len(), 6);
    }

    #[tokio::test]
    async fn a_sweep_over_two_shards_expires_the_due_instances_of_both() {
        use crate::http::tests::{harness, NOW_MS};
        use crate::sweeper::{Sweeper, PAGE_SIZE};

        let ids_in = |partitions: std::ops::Range<i32>, count: usize| -> Vec<String> {
            (0u64..)
                .map(|n| format!("00000000-0000-4000-8000-{n:012x}"))
                .filter(|id| partitions.contains(&instance_partition(id, 6).unwrap()))
                .take(count)
                .collect()
        };
        // More due than one page, interleaved by deadline across the shards,
        // and one deadline in each shard that has not passed.
        let index_of = |ids: Vec<String>, first: i64| -> Vec<DueDeadline> {
            let mut lines: Vec<DueDeadline> = ids
                .iter()
                .enumerate()
                .map(|(n, id)| {
                    due(
                        NOW_MS - 10_000 + first + 2 * n as i64,
                        id,
                        DeadlineKind::Decision,
                    )
                })
                .collect();
            lines.last_mut().unwrap().deadline = NOW_MS + 60_000;
            lines[0].kind = DeadlineKind::Grant;
            lines[0].status = Some(StatusName::Authorized);
            lines
        };
        let a = Arc::new(FakeShard {
            owned: Mutex::new(vec![0, 1, 2]),
            due: index_of(ids_in(0..3, PAGE_SIZE), 0),
            ..FakeShard::default()
        });
        let b = Arc::new(FakeShard {
            owned: Mutex::new(vec![3, 4, 5]),
            due: index_of(ids_in(3..6, PAGE_SIZE), 1),
            ..FakeShard::default()
        });
        let urls = vec![serve(a.clone()).await, serve(b.clone()).await];
        let projector = Arc::new(ShardedProjector::new(&urls, Duration::from_secs(5)).unwrap());
        let h = harness();
        let mut sweeper = Sweeper::new(
            h.state.log.clone(),
            projector,
            h.state.clock.clone(),
            h.state.metrics.clone(),
        );
        let report = sweeper.sweep().await.expect("sweep");
        let expected: Vec<(String, DeadlineKind)> = a.due[..PAGE_SIZE - 1]
            .iter()
            .chain(&b.due[..PAGE_SIZE - 1])
            .map(|d| (d.instance_id.clone(), d.kind))
            .collect();
        let mut emitted = report.emitted.clone();
        emitted.sort();
        let mut sorted = expected.clone();
        sorted.sort();
        assert_eq!(emitted, sorted, "every due instance of both shards, once");
        // In deadline order across the shards.
        let deadlines: Vec<i64> = report
            .emitted
            .iter()
            .map(|(id, _)| {
                a.due
                    .iter()
                    .chain(&b.due)
                    .find(|d| &d.instance_id == id)
                    .unwrap()
                    .deadline
            })
            .collect();
        assert!(deadlines.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(h.log.len(), expected.len(), "one append each");
        assert!(
            asked(&a).is_empty() && asked(&b).is_empty(),
            "no per-instance reads"
        );
    }

    #[test]
    fn every_url_must_be_a_distinct_http_url() {
        let urls = |list: &[&str]| list.iter().map(|u| (*u).to_owned()).collect::<Vec<_>>();
        let timeout = Duration::from_secs(1);
        assert!(ShardedProjector::new(&urls(&URLS), timeout).is_ok());
        let error = ShardedProjector::new(&urls(&["http://a:8081/", "http://a:8081"]), timeout)
            .unwrap_err();
        assert!(error.to_string().contains("given twice"), "{error}");
        assert!(matches!(
            ShardedProjector::new(&urls(&["http://a:8081", "https://b"]), timeout),
            Err(ProjectorError::Url(_))
        ));
    }
}
