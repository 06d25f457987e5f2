//! Listing tasks: oldest first, by status and priority, page by page.
//!
//! A page reads the lists the filter selects from where the previous page stopped (the token
//! names the position and, for each list, the leaf to resume at), then reads the tasks those
//! entries name and keeps the ones whose stored record still belongs there. Entries left behind
//! by changes in flight or interrupted are skipped, and cleaned up once their task has moved on.
//! A task is named once per paging, even while it moves between lists: its entries share one
//! position and are read one after the other, a page judges them all by one read of its record
//! (so only the entry of the list it was in then matches), and the next page starts after it.
//!
//! Overdue tasks (due before now, not completed) are the open lists read the same way, keeping
//! only the tasks past their due date: a page of them costs reads in proportion to the open
//! tasks passed over, not to the page.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

use super::{
    Error,
    index::{Entry, IndexError, LeafId, ListId, ListReader, Position},
    ports::{KeyValueStore, Ports},
    store::CorruptDocument,
    tasks::{Tasks, list_of, position_of},
};
use crate::{
    domain::{Priority, Task, TaskId, TaskRecord, TaskStatus, Versioned, Violations, time},
    telemetry::metrics::METRICS,
};

pub(crate) const DEFAULT_PAGE_SIZE: usize = 20;
pub(crate) const MAX_PAGE_SIZE: usize = 100;
/// An entry whose task was never written is removed once it is this old (no create takes
/// longer; younger ones may be a create in flight).
const ABANDONED_AFTER: Duration = Duration::from_secs(600);

/// Where the next page starts: after this position, in these leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PageToken {
    filter: String,
    after: Position,
    hints: Vec<Option<LeafId>>,
}

fn filter_tag(status: Option<TaskStatus>, priority: Option<Priority>, overdue: bool) -> String {
    format!(
        "{}/{}{}",
        status.map_or("*", TaskStatus::as_str),
        priority.map_or_else(|| "*".to_string(), |p| p.value().to_string()),
        if overdue { "/overdue" } else { "" }
    )
}

impl PageToken {
    pub(crate) fn encode(&self) -> String {
        let hints: Vec<&str> = self
            .hints
            .iter()
            .map(|h| h.as_deref().unwrap_or(""))
            .collect();
        URL_SAFE_NO_PAD.encode(format!(
            "v2:{}:{}:{}:{}",
            self.filter,
            self.after.micros,
            self.after.id,
            hints.join(",")
        ))
    }

    /// Parses a token, which must have been issued for the same filter.
    fn decode(
        token: &str,
        status: Option<TaskStatus>,
        priority: Option<Priority>,
        overdue: bool,
    ) -> Result<Self, Violations> {
        let invalid = || Violations::single("page_token", "is not a token this service issued");
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
        let text = String::from_utf8(bytes).map_err(|_| invalid())?;
        let filter = filter_tag(status, priority, overdue);
        let position = |micros: &str, id: &str| -> Result<Position, Violations> {
            Ok(Position {
                micros: micros.parse().map_err(|_| invalid())?,
                id: TaskId::parse(id).map_err(|_| invalid())?,
            })
        };
        let parts: Vec<&str> = text.split(':').collect();
        match parts.as_slice() {
            // Tokens of the earlier index: a position only.
            ["v1", micros, id] => Ok(Self {
                after: position(micros, id)?,
                hints: Vec::new(),
                filter,
            }),
            ["v2", issued_for, micros, id, hints] => {
                if *issued_for != filter {
                    return Err(Violations::single(
                        "page_token",
                        "was issued for a different filter: keep status, priority and overdue the same while paging",
                    ));
                }
                let hints = hints
                    .split(',')
                    .map(|h| (!h.is_empty()).then(|| h.to_string()))
                    .collect();
                Ok(Self {
                    after: position(micros, id)?,
                    hints,
                    filter,
                })
            }
            _ => Err(invalid()),
        }
    }
}

/// A task's record as read for its list entries.
type RecordRead = Result<Option<Versioned<TaskRecord>>, CorruptDocument>;

/// A valid list request.
#[derive(Debug, Clone)]
pub(crate) struct ListQuery {
    pub(crate) status: Option<TaskStatus>,
    pub(crate) priority: Option<Priority>,
    /// Only tasks due before now and not completed.
    pub(crate) overdue: bool,
    pub(crate) page_size: usize,
    pub(crate) page_token: Option<PageToken>,
}

impl ListQuery {
    /// `page_size` 0 means the default (20); above 100 is read as 100.
    pub(crate) fn parse(
        status: Option<TaskStatus>,
        priority: Option<Priority>,
        overdue: bool,
        page_size: i64,
        page_token: &str,
    ) -> Result<Self, Violations> {
        let page_size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n < 0 => {
                return Err(Violations::single(
                    "page_size",
                    format!("must be between 0 and {MAX_PAGE_SIZE}, got {n}"),
                ));
            }
            n => usize::try_from(n)
                .unwrap_or(MAX_PAGE_SIZE)
                .min(MAX_PAGE_SIZE),
        };
        let page_token = match page_token {
            "" => None,
            token => Some(PageToken::decode(token, status, priority, overdue)?),
        };
        Ok(Self {
            status,
            priority,
            overdue,
            page_size,
            page_token,
        })
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Page {
    pub(crate) tasks: Vec<Versioned<Task>>,
    pub(crate) next_page_token: Option<PageToken>,
}

impl<P: Ports> Tasks<P> {
    /// Tasks oldest first (creation time, then id), optionally of one status and/or priority,
    /// optionally only the overdue ones.
    pub(crate) async fn list(&self, query: &ListQuery) -> Result<Page, Error> {
        let now = time::now();
        let lists = lists_of(query);
        let keep = |task: &Task| !query.overdue || task.deadline.is_overdue(task.status, now);
        let (after, hints) = resume_at(query.page_token.as_ref(), lists.len());
        let mut reader = self.index.reader(&lists, after, hints).await?;
        let mut record_reads = 0;
        let mut tasks = Vec::with_capacity(query.page_size);
        let mut last: Option<Position> = None;
        let mut judged_by: Option<(Position, RecordRead)> = None;
        while tasks.len() < query.page_size {
            let batch = next_batch(&mut reader, query.page_size - tasks.len()).await?;
            if batch.is_empty() {
                observe_reads(reader.reads() + record_reads);
                return Ok(Page {
                    tasks,
                    next_page_token: None,
                });
            }
            let ids: Vec<TaskId> = batch.iter().map(|(_, e)| e.position.id.clone()).collect();
            record_reads += 1;
            let records = self.records.get_many(&ids).await?;
            for ((list, entry), record) in batch.into_iter().zip(records) {
                last = Some(entry.position.clone());
                // A task moving between two of the lists read has an entry in each, at the same
                // position, read one after the other, and its record is read for each. Judged
                // by one read, only the entry of the list it was in then matches; judged by two,
                // a move landing between them would have both match, or neither. So all are
                // judged by the first.
                let judged = match judged_by.take() {
                    Some((position, first)) if position == entry.position => (position, first),
                    _ => (entry.position.clone(), record),
                };
                let (_, record) = judged_by.insert(judged);
                tasks.extend(self.listed(list, entry, record).filter(|t| keep(&t.value)));
            }
        }
        let more = reader.next().await?.is_some();
        observe_reads(reader.reads() + record_reads);
        let next_page_token = match (more, last) {
            (true, Some(after)) => Some(PageToken {
                filter: filter_tag(query.status, query.priority, query.overdue),
                hints: reader.resume_hints(&after),
                after,
            }),
            _ => None,
        };
        Ok(Page {
            tasks,
            next_page_token,
        })
    }

    /// The task `entry` names in `list`, when its stored record is listed there. An entry the
    /// task has left, or whose task was never written, is removed soon.
    fn listed(&self, list: ListId, entry: Entry, record: &RecordRead) -> Option<Versioned<Task>> {
        match record {
            // Listed only at its own position: an entry a failed attempt left at another one
            // (older builds gave a retried create a new creation time) is only extra.
            Ok(Some(stored))
                if list_of(&stored.value) == Some(list)
                    && position_of(&stored.value) == entry.position =>
            {
                stored.value.live().map(|task| Versioned {
                    value: task.clone(),
                    etag: stored.value.etag(),
                })
            }
            // The task has moved on (status, priority, position) or was deleted: once its
            // record is at or past the entry's revision, the entry is only extra.
            Ok(Some(stored)) if stored.value.revision >= entry.revision => {
                self.index
                    .remove_soon(list, entry.position, stored.value.revision);
                None
            }
            // A change to this list still in flight.
            Ok(Some(_)) => None,
            Ok(None) => {
                let age = time::now().timestamp_micros() - entry.position.micros;
                if age > ABANDONED_AFTER.as_micros() as i64 {
                    self.index.remove_soon(list, entry.position, entry.revision);
                }
                None
            }
            Err(error) => {
                tracing::warn!(task_id = %entry.position.id, error = %super::chain(error), "a listed task cannot be read; skipped");
                None
            }
        }
    }
}

/// The lists a query reads: those of its status and priority, only the open ones when it asks
/// for overdue tasks.
fn lists_of(query: &ListQuery) -> Vec<ListId> {
    let mut lists = ListId::matching(query.status, query.priority);
    if query.overdue {
        lists.retain(|list| list.status != TaskStatus::Completed);
    }
    lists
}

/// Where reading resumes: after the token's position, at its leaves when it has one for each
/// of `lists` lists.
fn resume_at(token: Option<&PageToken>, lists: usize) -> (Option<Position>, Vec<Option<LeafId>>) {
    match token {
        Some(token) if token.hints.len() == lists => {
            (Some(token.after.clone()), token.hints.clone())
        }
        Some(token) => (Some(token.after.clone()), vec![None; lists]),
        None => (None, vec![None; lists]),
    }
}

/// The next `wanted` entries of the lists, fewer only at their end.
async fn next_batch<S: KeyValueStore>(
    reader: &mut ListReader<'_, S>,
    wanted: usize,
) -> Result<Vec<(ListId, Entry)>, IndexError> {
    let mut batch = Vec::with_capacity(wanted);
    while batch.len() < wanted {
        match reader.next().await? {
            Some(found) => batch.push(found),
            None => break,
        }
    }
    Ok(batch)
}

/// Counts the store calls one page took.
fn observe_reads(reads: usize) {
    METRICS.list_page_reads.observe(reads as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_reject_forgeries() {
        let token = PageToken {
            filter: filter_tag(Some(TaskStatus::Pending), None, false),
            after: Position {
                micros: 1_736_937_000_000_000,
                id: TaskId::parse("a.b-c").unwrap(),
            },
            hints: vec![Some("head".into()), None, Some("k3j2h1g0f9e8".into())],
        };
        assert_eq!(
            PageToken::decode(&token.encode(), Some(TaskStatus::Pending), None, false).unwrap(),
            token
        );
        assert!(
            PageToken::decode(&token.encode(), None, None, false).is_err(),
            "other filter"
        );
        assert!(
            PageToken::decode(&token.encode(), Some(TaskStatus::Pending), None, true).is_err(),
            "overdue is part of the filter"
        );
        assert!(PageToken::decode("not-base64!", None, None, false).is_err());
        assert!(PageToken::decode(&URL_SAFE_NO_PAD.encode("v3:1:x"), None, None, false).is_err());
        assert!(PageToken::decode(&URL_SAFE_NO_PAD.encode("v1:x:y"), None, None, false).is_err());
        let legacy =
            PageToken::decode(&URL_SAFE_NO_PAD.encode("v1:5:t-1"), None, None, false).unwrap();
        assert_eq!(legacy.after.micros, 5);
        assert!(legacy.hints.is_empty());
    }

    #[test]
    fn page_size_defaults_and_caps() {
        assert_eq!(
            ListQuery::parse(None, None, false, 0, "")
                .unwrap()
                .page_size,
            20
        );
        assert_eq!(
            ListQuery::parse(None, None, false, 500, "")
                .unwrap()
                .page_size,
            100
        );
        assert_eq!(
            ListQuery::parse(None, None, false, 7, "")
                .unwrap()
                .page_size,
            7
        );
        assert!(ListQuery::parse(None, None, false, -1, "").is_err());
    }
}
