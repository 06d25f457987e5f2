//! Task use cases: create, get, list, update, change status, delete.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};

use super::Error;
use crate::{
    domain::{
        NewTask, Task, TaskChanges, TaskEvent, TaskEventType, TaskId, TaskStatus, Violations, time,
    },
    sidecar::{
        SidecarError, Versioned, backoff, events::EventPublisher, index::IndexEntry,
        state::MAX_ATTEMPTS, tasks::TaskStore,
    },
};

pub const DEFAULT_PAGE_SIZE: usize = 20;
pub const MAX_PAGE_SIZE: usize = 100;

/// Where the next page starts: after this (creation time, id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageToken {
    created_micros: i64,
    id: TaskId,
}

impl PageToken {
    fn after(entry: &IndexEntry) -> Self {
        Self {
            created_micros: entry.created_micros,
            id: entry.id.clone(),
        }
    }

    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("v1:{}:{}", self.created_micros, self.id))
    }

    pub fn decode(token: &str) -> Result<Self, Violations> {
        let invalid = || Violations::single("page_token", "is not a token this service issued");
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
        let text = String::from_utf8(bytes).map_err(|_| invalid())?;
        let mut parts = text.splitn(3, ':');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("v1"), Some(micros), Some(id)) => Ok(Self {
                created_micros: micros.parse().map_err(|_| invalid())?,
                id: TaskId::parse(id).map_err(|_| invalid())?,
            }),
            _ => Err(invalid()),
        }
    }

    /// The index position the next page starts after.
    fn entry(&self) -> IndexEntry {
        IndexEntry {
            created_micros: self.created_micros,
            id: self.id.clone(),
        }
    }
}

/// A valid list request.
#[derive(Debug, Clone)]
pub struct ListQuery {
    pub status: Option<TaskStatus>,
    pub page_size: usize,
    pub page_token: Option<PageToken>,
}

impl ListQuery {
    /// `page_size` 0 means the default (20); above 100 is read as 100.
    pub fn parse(
        status: Option<TaskStatus>,
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
            token => Some(PageToken::decode(token)?),
        };
        Ok(Self {
            status,
            page_size,
            page_token,
        })
    }
}

/// What a read-modify-write does with the task it read.
enum Plan {
    Unchanged,
    Replace(Task, TaskEventType),
    Delete,
}

#[derive(Debug, Clone)]
pub struct Page {
    pub tasks: Vec<Versioned<Task>>,
    pub next_page_token: Option<PageToken>,
}

/// The task use cases, over the state store and the event topic.
#[derive(Debug, Clone)]
pub struct Tasks {
    store: TaskStore,
    events: EventPublisher,
}

impl Tasks {
    pub fn new(store: TaskStore, events: EventPublisher) -> Self {
        Self { store, events }
    }

    pub async fn create(&self, new: NewTask) -> Result<Versioned<Task>, Error> {
        let task = Task::create(TaskId::generate(), new, time::now());
        let saved = self.store.insert(&task).await?;
        self.publish(TaskEvent::of(TaskEventType::Created, &task), saved)
            .await
    }

    pub async fn get(&self, id: &TaskId) -> Result<Versioned<Task>, Error> {
        self.store
            .get(id)
            .await?
            .ok_or_else(|| Error::NotFound(id.clone()))
    }

    /// Tasks oldest first (creation time, then id), optionally of one status.
    pub async fn list(&self, query: &ListQuery) -> Result<Page, Error> {
        let mut cursor = query.page_token.as_ref().map(PageToken::entry);
        let mut tasks = Vec::with_capacity(query.page_size);
        loop {
            let wanted = query.page_size - tasks.len();
            // With a status filter, read ahead: not every task will match.
            let batch = if query.status.is_some() {
                wanted * 4
            } else {
                wanted
            };
            let (entries, more) = self
                .store
                .index()
                .next_after(cursor.as_ref(), batch.clamp(1, 400))
                .await?;
            let ids: Vec<TaskId> = entries.iter().map(|e| e.id.clone()).collect();
            let found = self.store.get_many(&ids).await?;
            for (position, (entry, task)) in entries.iter().zip(found).enumerate() {
                // An entry without a task: a create that failed half-way, or a delete whose
                // index update failed. Skipped.
                let Some(task) = task else { continue };
                if query
                    .status
                    .is_none_or(|status| task.value.status == status)
                {
                    tasks.push(task);
                    if tasks.len() == query.page_size {
                        let rest = more || position + 1 < entries.len();
                        return Ok(Page {
                            tasks,
                            next_page_token: rest.then(|| PageToken::after(entry)),
                        });
                    }
                }
            }
            match entries.last() {
                Some(last) if more => cursor = Some(last.clone()),
                _ => {
                    return Ok(Page {
                        tasks,
                        next_page_token: None,
                    });
                }
            }
        }
    }

    pub async fn update(
        &self,
        id: &TaskId,
        changes: &TaskChanges,
        expected_etag: Option<&str>,
    ) -> Result<Versioned<Task>, Error> {
        self.apply(id, expected_etag, |current, now| {
            let mut task = current.clone();
            if task.apply(changes, now) {
                Plan::Replace(task, TaskEventType::Updated)
            } else {
                Plan::Unchanged
            }
        })
        .await
    }

    /// Setting the status a task already has changes nothing and publishes nothing.
    pub async fn change_status(
        &self,
        id: &TaskId,
        status: TaskStatus,
        expected_etag: Option<&str>,
    ) -> Result<Versioned<Task>, Error> {
        self.apply(id, expected_etag, |current, now| {
            let mut task = current.clone();
            if task.set_status(status, now) {
                Plan::Replace(task, TaskEventType::StatusChanged(status))
            } else {
                Plan::Unchanged
            }
        })
        .await
    }

    pub async fn delete(&self, id: &TaskId, expected_etag: Option<&str>) -> Result<(), Error> {
        self.apply(id, expected_etag, |_, _| Plan::Delete)
            .await
            .map(|_| ())
    }

    /// Optimistic read-modify-write: `plan` decides from the current task what to write, and
    /// the write is guarded by the ETag read. With the caller's ETag, a conflict is the caller's
    /// to resolve (ABORTED). Without one, the plan is made again on a fresh read, a bounded
    /// number of times, so concurrent writers never overwrite each other's changes.
    ///
    /// Returns the task as saved (or, for a delete, as it was).
    async fn apply<F>(
        &self,
        id: &TaskId,
        expected_etag: Option<&str>,
        mut plan: F,
    ) -> Result<Versioned<Task>, Error>
    where
        F: FnMut(&Task, DateTime<Utc>) -> Plan,
    {
        for attempt in 1..=MAX_ATTEMPTS {
            let current = self.get(id).await?;
            check_expected(&current, expected_etag)?;
            let now = time::now();
            let written = match plan(&current.value, now) {
                Plan::Unchanged => return Ok(current),
                Plan::Replace(task, event_type) => self
                    .store
                    .replace(&task, &current.etag)
                    .await
                    .map(|saved| (saved, TaskEvent::of(event_type, &task))),
                Plan::Delete => self.store.delete(id, &current.etag).await.map(|()| {
                    let event = TaskEvent {
                        timestamp: now,
                        ..TaskEvent::of(TaskEventType::Deleted, &current.value)
                    };
                    (current, event)
                }),
            };
            match written {
                Ok((task, event)) => return self.publish(event, task).await,
                Err(SidecarError::EtagMismatch(_)) => {
                    self.after_conflict(id, expected_etag, attempt).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Contended {
            id: id.clone(),
            attempts: MAX_ATTEMPTS,
        })
    }

    /// After a lost write race: the caller's stale ETag is final; otherwise wait and retry.
    async fn after_conflict(
        &self,
        id: &TaskId,
        expected_etag: Option<&str>,
        attempt: u32,
    ) -> Result<(), Error> {
        if expected_etag.is_some() {
            let current = self.get(id).await?;
            return Err(stale(&current));
        }
        backoff(attempt).await;
        Ok(())
    }

    async fn publish(
        &self,
        event: TaskEvent,
        saved: Versioned<Task>,
    ) -> Result<Versioned<Task>, Error> {
        match self.events.publish(&event).await {
            Ok(()) => Ok(saved),
            Err(source) => {
                tracing::error!(
                    task_id = %event.task_id,
                    event_type = %event.event_type,
                    error = %source,
                    "the change was saved but its event was not published"
                );
                Err(Error::EventNotPublished {
                    task: Box::new(saved),
                    event_type: event.event_type,
                    source,
                })
            }
        }
    }
}

fn check_expected(current: &Versioned<Task>, expected_etag: Option<&str>) -> Result<(), Error> {
    match expected_etag {
        Some(expected) if expected != current.etag => Err(stale(current)),
        _ => Ok(()),
    }
}

fn stale(current: &Versioned<Task>) -> Error {
    Error::StaleEtag {
        id: current.value.id.clone(),
        current_etag: current.etag.clone(),
        current_status: current.value.status,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_reject_forgeries() {
        let token = PageToken {
            created_micros: 1_736_937_000_000_000,
            id: TaskId::parse("a.b-c").unwrap(),
        };
        assert_eq!(PageToken::decode(&token.encode()).unwrap(), token);
        assert!(PageToken::decode("not-base64!").is_err());
        assert!(PageToken::decode(&URL_SAFE_NO_PAD.encode("v2:1:x")).is_err());
        assert!(PageToken::decode(&URL_SAFE_NO_PAD.encode("v1:x:y")).is_err());
    }

    #[test]
    fn page_size_defaults_and_caps() {
        assert_eq!(ListQuery::parse(None, 0, "").unwrap().page_size, 20);
        assert_eq!(ListQuery::parse(None, 500, "").unwrap().page_size, 100);
        assert_eq!(ListQuery::parse(None, 7, "").unwrap().page_size, 7);
        assert!(ListQuery::parse(None, -1, "").is_err());
    }
}
