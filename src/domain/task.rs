use super::text::echo;
use std::fmt;

use chrono::{DateTime, Utc};

use super::{Deadline, DeadlineChange, FieldViolation, TaskStatus, Violations};

/// Longest title accepted, in characters (as the original's `max_length=200`).
pub(crate) const TITLE_MAX_CHARS: usize = 200;
/// Longest description accepted, in characters. The original had no limit; 2000 keeps a task a
/// small state-store value and an event a small message.
pub(crate) const DESCRIPTION_MAX_CHARS: usize = 2000;
/// Longest id accepted. Generated ids are UUIDs (36 characters).
const ID_MAX_CHARS: usize = 64;

/// A task's id: a UUID for tasks created here; any id of 1 to 64 letters, digits, `-`, `_` or
/// `.` for tasks written by others. Safe to embed in a state key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(String);

impl TaskId {
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }

    pub(crate) fn parse(text: &str) -> Result<Self, FieldViolation> {
        Self::check(text)?;
        Ok(Self(text.to_string()))
    }

    /// As [`TaskId::parse`], keeping `text` instead of copying it (ids read back in bulk).
    pub(crate) fn parse_owned(text: String) -> Result<Self, FieldViolation> {
        Self::check(&text)?;
        Ok(Self(text))
    }

    fn check(text: &str) -> Result<(), FieldViolation> {
        if text.is_empty() {
            return Err(FieldViolation::new("id", "is required"));
        }
        // Every allowed character is ASCII, so bytes count characters wherever all are allowed.
        let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
        if text.len() > ID_MAX_CHARS || !text.bytes().all(allowed) {
            return Err(FieldViolation::new(
                "id",
                format!(
                    "must be 1 to {ID_MAX_CHARS} letters, digits, '-', '_' or '.', got {}",
                    echo(text)
                ),
            ));
        }
        Ok(())
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Characters that render as nothing: a title made only of these and whitespace is empty.
fn is_invisible(c: char) -> bool {
    c.is_whitespace() || matches!(c, '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}')
}

/// A task's title. New titles are 1 to 200 characters, not only whitespace or invisible
/// characters, without control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Title(String);

impl Title {
    /// A title a caller sends.
    pub(crate) fn parse(text: &str) -> Result<Self, FieldViolation> {
        let chars = text.chars().count();
        if chars == 0 || chars > TITLE_MAX_CHARS {
            return Err(FieldViolation::new(
                "title",
                format!("must be 1 to {TITLE_MAX_CHARS} characters long, got {chars}"),
            ));
        }
        if text.chars().any(char::is_control) {
            return Err(FieldViolation::new(
                "title",
                "must not contain control characters",
            ));
        }
        if text.chars().all(is_invisible) {
            return Err(FieldViolation::new(
                "title",
                "must not be only whitespace or invisible characters",
            ));
        }
        Ok(Self(text.to_string()))
    }

    /// A title read from the store: anything non-empty, as the original implementation accepted
    /// (it allowed titles of only whitespace). Such a title is kept as it is until a caller
    /// replaces it.
    pub(crate) fn stored(text: &str) -> Result<Self, FieldViolation> {
        if text.is_empty() {
            return Err(FieldViolation::new("title", "is empty"));
        }
        Ok(Self(text.to_string()))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// A task's description. New descriptions are up to 2000 characters, without control characters
/// other than line breaks and tabs. An empty description is no description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Description(String);

impl Description {
    /// A description a caller sends; `None` for an empty text.
    pub(crate) fn parse(text: &str) -> Result<Option<Self>, FieldViolation> {
        let chars = text.chars().count();
        if chars > DESCRIPTION_MAX_CHARS {
            return Err(FieldViolation::new(
                "description",
                format!("must be at most {DESCRIPTION_MAX_CHARS} characters long, got {chars}"),
            ));
        }
        if text
            .chars()
            .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
        {
            return Err(FieldViolation::new(
                "description",
                "must not contain control characters other than line breaks and tabs",
            ));
        }
        Ok((chars > 0).then(|| Self(text.to_string())))
    }

    /// A description read from the store, of any length (the original set no limit).
    pub(crate) fn stored(text: &str) -> Option<Self> {
        (!text.is_empty()).then(|| Self(text.to_string()))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// 1 (lowest, the default) to 5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Priority(u8);

impl Priority {
    pub(crate) const DEFAULT: Priority = Priority(1);
    pub const ALL: [Priority; 5] = [
        Priority(1),
        Priority(2),
        Priority(3),
        Priority(4),
        Priority(5),
    ];

    pub(crate) fn parse(value: i64) -> Result<Self, FieldViolation> {
        match u8::try_from(value) {
            Ok(p @ 1..=5) => Ok(Self(p)),
            _ => Err(FieldViolation::new(
                "priority",
                format!("must be between 1 and 5, got {value}"),
            )),
        }
    }

    pub(crate) fn value(self) -> u8 {
        self.0
    }
}

impl Default for Priority {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A caller's id for one create request (Google AIP-155): repeating a create with the same id
/// returns the task the first call created. 1 to 128 letters, digits, `-`, `_` or `.`; a UUID is
/// a good choice.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct RequestId(String);

const REQUEST_ID_MAX_CHARS: usize = 128;

impl RequestId {
    /// `None` for an empty text (no request id).
    pub(crate) fn parse(text: &str) -> Result<Option<Self>, FieldViolation> {
        if text.is_empty() {
            return Ok(None);
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if text.len() > REQUEST_ID_MAX_CHARS || !text.chars().all(allowed) {
            return Err(FieldViolation::new(
                "request_id",
                format!(
                    "must be 1 to {REQUEST_ID_MAX_CHARS} letters, digits, '-', '_' or '.' (a UUID, for example)"
                ),
            ));
        }
        Ok(Some(Self(text.to_string())))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A valid request to create a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTask {
    pub(crate) title: Title,
    pub(crate) description: Option<Description>,
    pub priority: Priority,
    pub(crate) deadline: Deadline,
}

impl NewTask {
    /// Parses every field, reporting every violation at once.
    pub fn parse(
        title: &str,
        description: Option<&str>,
        priority: Option<i64>,
    ) -> Result<Self, Violations> {
        let mut violations = Violations::default();
        let title = violations.check(Title::parse(title));
        let description = violations.check(description.map(Description::parse).transpose());
        let priority = violations.check(priority.map(Priority::parse).transpose());
        match (title, description, priority) {
            (Some(title), Some(description), Some(priority)) => Ok(Self {
                title,
                description: description.flatten(),
                priority: priority.unwrap_or_default(),
                deadline: Deadline::default(),
            }),
            _ => Err(violations),
        }
    }

    pub(crate) fn with_deadline(self, deadline: Deadline) -> Self {
        Self { deadline, ..self }
    }
}

impl NewTask {
    /// A stable digest of the request's content (FNV-1a, 64 bits), to recognise a retry of the
    /// same create.
    pub(crate) fn fingerprint(&self) -> String {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let description = self.description.as_ref().map(Description::as_str);
        let mut parts = vec![
            self.title.as_str().to_string(),
            "\u{0}".into(),
            description.unwrap_or("\u{1}").into(),
            "\u{0}".into(),
            self.priority.value().to_string(),
        ];
        // Only a set time counts, so requests without a deadline keep the digest they had
        // before deadlines existed (reservations store it).
        for at in [self.deadline.due_at, self.deadline.remind_at] {
            parts.push("\u{0}".into());
            parts.push(
                at.map(|at| at.timestamp_micros().to_string())
                    .unwrap_or_default(),
            );
        }
        if self.deadline == Deadline::default() {
            parts.truncate(5);
        }
        for byte in parts.iter().flat_map(|p| p.bytes()) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("{hash:016x}")
    }
}

/// A valid partial update: fields left `None` keep their value. `description: Some(None)`
/// removes the description.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskChanges {
    pub(crate) title: Option<Title>,
    pub(crate) description: Option<Option<Description>>,
    pub(crate) priority: Option<Priority>,
    pub(crate) deadline: DeadlineChange,
}

impl TaskChanges {
    pub fn parse(
        title: Option<&str>,
        description: Option<&str>,
        priority: Option<i64>,
    ) -> Result<Self, Violations> {
        let mut violations = Violations::default();
        let title = violations.check(title.map(Title::parse).transpose());
        let description = violations.check(description.map(Description::parse).transpose());
        let priority = violations.check(priority.map(Priority::parse).transpose());
        violations.into_result()?;
        Ok(Self {
            title: title.flatten(),
            description: description.flatten(),
            priority: priority.flatten(),
            deadline: DeadlineChange::default(),
        })
    }

    pub(crate) fn with_deadline(self, deadline: DeadlineChange) -> Self {
        Self { deadline, ..self }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.title.is_none()
            && self.description.is_none()
            && self.priority.is_none()
            && self.deadline.is_empty()
    }
}

/// A task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub(crate) id: TaskId,
    pub(crate) title: Title,
    pub(crate) description: Option<Description>,
    pub(crate) status: TaskStatus,
    pub(crate) priority: Priority,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) updated_at: DateTime<Utc>,
    pub(crate) deadline: Deadline,
}

impl Task {
    /// A new pending task.
    pub fn create(id: TaskId, new: NewTask, now: DateTime<Utc>) -> Self {
        Self {
            id,
            title: new.title,
            description: new.description,
            status: TaskStatus::Pending,
            priority: new.priority,
            created_at: now,
            updated_at: now,
            deadline: new.deadline,
        }
    }

    /// Applies `changes`; returns whether anything changed (and only then touches `updated_at`).
    /// A deadline that breaks its rules against the task's current one changes nothing.
    pub fn apply(&mut self, changes: &TaskChanges, now: DateTime<Utc>) -> Result<bool, Violations> {
        let before = self.clone();
        self.deadline.apply(&changes.deadline, now)?;
        if let Some(title) = &changes.title {
            self.title = title.clone();
        }
        if let Some(description) = &changes.description {
            self.description = description.clone();
        }
        if let Some(priority) = changes.priority {
            self.priority = priority;
        }
        let changed = *self != before;
        if changed {
            self.updated_at = now;
        }
        Ok(changed)
    }

    /// Moves to `status`; returns whether it changed. Any status may follow any other (a
    /// completed task can be reopened), as in the original.
    pub fn set_status(&mut self, status: TaskStatus, now: DateTime<Utc>) -> bool {
        if self.status == status {
            return false;
        }
        self.status = status;
        self.updated_at = now;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::time;

    #[test]
    fn titles_refuse_control_and_invisible_only_text() {
        assert!(Title::parse("a\u{0}b").is_err());
        assert!(Title::parse("a\u{1b}[31m").is_err());
        assert!(Title::parse("\u{200B}\u{200B}").is_err());
        assert!(Title::parse(" \u{FEFF} ").is_err());
        assert!(Title::parse("zero\u{200B}width").is_ok());
        assert!(Description::parse("line one\nline two\ttab").is_ok());
        assert!(Description::parse("bell\u{7}").is_err());
    }

    #[test]
    fn stored_values_are_read_leniently() {
        assert_eq!(Title::stored("   ").unwrap().as_str(), "   ");
        assert!(Title::stored("").is_err());
        let long = "d".repeat(DESCRIPTION_MAX_CHARS + 500);
        assert_eq!(
            Description::stored(&long).unwrap().as_str().len(),
            long.len()
        );
        assert_eq!(Description::stored(""), None);
    }

    #[test]
    fn title_length_is_counted_in_characters() {
        assert!(Title::parse("").is_err());
        assert!(Title::parse("   ").is_err());
        assert!(Title::parse(&"é".repeat(200)).is_ok());
        let too_long = Title::parse(&"x".repeat(201)).unwrap_err();
        assert_eq!(too_long.field, "title");
        assert!(too_long.description.contains("got 201"), "{too_long:?}");
    }

    #[test]
    fn priority_is_one_to_five() {
        for p in 1..=5 {
            assert_eq!(Priority::parse(p).unwrap().value() as i64, p);
        }
        for p in [0, 6, -1, 256, i64::MAX] {
            assert!(Priority::parse(p).is_err(), "{p}");
        }
    }

    #[test]
    fn ids_are_safe_in_a_state_key() {
        assert!(TaskId::parse("3f1c9a9e-2b7d-4e7c-9a51-0c0b5f6d2a11").is_ok());
        assert!(TaskId::parse("task-123").is_ok());
        for bad in ["", "a||b", "a/b", "a b", &"x".repeat(65)] {
            assert!(TaskId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn new_task_reports_every_violation() {
        let errors = NewTask::parse("", Some(&"d".repeat(2001)), Some(9)).unwrap_err();
        let fields: Vec<_> = errors.0.iter().map(|v| v.field).collect();
        assert_eq!(fields, ["title", "description", "priority"]);
    }

    #[test]
    fn request_ids_and_fingerprints() {
        assert_eq!(RequestId::parse("").unwrap(), None);
        assert!(
            RequestId::parse("3f1c9a9e-2b7d-4e7c-9a51-0c0b5f6d2a11")
                .unwrap()
                .is_some()
        );
        assert!(RequestId::parse("a b").is_err());
        assert!(RequestId::parse(&"x".repeat(129)).is_err());
        let a = NewTask::parse("t", Some("d"), Some(2)).unwrap();
        assert_eq!(
            a.fingerprint(),
            NewTask::parse("t", Some("d"), Some(2))
                .unwrap()
                .fingerprint()
        );
        assert_ne!(
            a.fingerprint(),
            NewTask::parse("t", None, Some(2)).unwrap().fingerprint()
        );
        assert_ne!(
            a.fingerprint(),
            NewTask::parse("t", Some("d"), Some(3))
                .unwrap()
                .fingerprint()
        );
        // The fixed value is part of what stored reservations compare against.
        assert_eq!(
            NewTask::parse("t", None, None).unwrap().fingerprint(),
            "0a21b126a9e9e3cb"
        );
    }

    #[test]
    fn new_task_defaults() {
        let task = NewTask::parse("Learn Dapr", Some(""), None).unwrap();
        assert_eq!(task.priority, Priority::DEFAULT);
        assert_eq!(task.description, None);
    }

    #[test]
    fn apply_touches_updated_at_only_on_change() {
        let created = time::parse("2025-01-15T10:30:00").unwrap();
        let later = time::parse("2025-01-15T11:00:00").unwrap();
        let mut task = Task::create(
            TaskId::generate(),
            NewTask::parse("t", None, Some(2)).unwrap(),
            created,
        );
        let same = TaskChanges::parse(Some("t"), None, Some(2)).unwrap();
        assert!(!task.apply(&same, later).unwrap());
        assert_eq!(task.updated_at, created);

        let clear = TaskChanges::parse(None, Some(""), Some(3)).unwrap();
        assert!(task.apply(&clear, later).unwrap());
        assert_eq!(task.priority.value(), 3);
        assert_eq!(task.updated_at, later);
    }

    #[test]
    fn setting_the_same_status_changes_nothing() {
        let now = time::now();
        let mut task = Task::create(
            TaskId::generate(),
            NewTask::parse("t", None, None).unwrap(),
            now,
        );
        assert!(!task.set_status(TaskStatus::Pending, now));
        assert!(task.set_status(TaskStatus::Completed, now));
        assert!(
            task.set_status(TaskStatus::Pending, now),
            "reopening is allowed"
        );
    }
}
