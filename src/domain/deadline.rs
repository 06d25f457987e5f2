//! Due dates and reminders: when a task is due, when to remind before that, and which of the two
//! have already been announced.
//!
//! An announcement is itself a change of the task (a new revision with the `task.due` or
//! `task.reminder` event), so it is published exactly once by the same machinery as every other
//! change, however often the scheduler delivers the job that triggers it.

use std::fmt;

use chrono::{DateTime, Utc};

use super::{FieldViolation, TaskStatus, Violations, time};

/// The two moments a task can announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alarm {
    /// The task is due.
    Due,
    /// The task will be due soon.
    Reminder,
}

impl Alarm {
    pub(crate) const ALL: [Alarm; 2] = [Alarm::Due, Alarm::Reminder];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Alarm::Due => "due",
            Alarm::Reminder => "reminder",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == text)
    }
}

impl fmt::Display for Alarm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A task's due date, its reminder, and what has been announced of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Deadline {
    pub(crate) due_at: Option<DateTime<Utc>>,
    /// Only with a due date, and before it.
    pub(crate) remind_at: Option<DateTime<Utc>>,
    pub(crate) due_announced: bool,
    pub(crate) reminder_announced: bool,
}

impl Deadline {
    /// A new task's deadline; both times must be in the future, the reminder before the due
    /// date.
    pub(crate) fn parse_new(
        due_at: Option<DateTime<Utc>>,
        remind_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<Self, Violations> {
        let mut violations = Violations::default();
        violations.check(future("due_at", due_at, now));
        violations.check(future("remind_at", remind_at, now));
        violations.check(ordered(due_at, remind_at));
        violations.into_result()?;
        Ok(Self {
            due_at,
            remind_at,
            ..Self::default()
        })
    }

    /// The time `alarm` is set for, if it is set.
    pub(crate) fn at(&self, alarm: Alarm) -> Option<DateTime<Utc>> {
        match alarm {
            Alarm::Due => self.due_at,
            Alarm::Reminder => self.remind_at,
        }
    }

    fn announced(&self, alarm: Alarm) -> bool {
        match alarm {
            Alarm::Due => self.due_announced,
            // A reminder after the due date was announced has nothing left to remind of.
            Alarm::Reminder => self.reminder_announced || self.due_announced,
        }
    }

    /// The alarms still to announce for a task in `status`, with their times: what the
    /// scheduler must hold for it. A completed task announces nothing.
    pub(crate) fn pending(&self, status: TaskStatus) -> Vec<(Alarm, DateTime<Utc>)> {
        if status == TaskStatus::Completed {
            return Vec::new();
        }
        Alarm::ALL
            .into_iter()
            .filter(|alarm| !self.announced(*alarm))
            .filter_map(|alarm| self.at(alarm).map(|at| (alarm, at)))
            .collect()
    }

    /// Whether a job for `alarm` set at `at` should announce now: the alarm is still pending
    /// and still set for that time (a job for an earlier date, or a replayed one, is stale).
    pub(crate) fn fires(&self, status: TaskStatus, alarm: Alarm, at: DateTime<Utc>) -> bool {
        self.pending(status).contains(&(alarm, at))
    }

    pub(crate) fn announce(&mut self, alarm: Alarm) {
        match alarm {
            Alarm::Due => self.due_announced = true,
            Alarm::Reminder => self.reminder_announced = true,
        }
    }

    /// Applies a change of the due date and/or reminder; a moved date is announced again.
    /// Clearing the due date clears the reminder too.
    pub(crate) fn apply(
        &mut self,
        change: &DeadlineChange,
        now: DateTime<Utc>,
    ) -> Result<(), Violations> {
        let due_at = change.due_at.unwrap_or(self.due_at);
        let remind_at = match (change.due_at, change.remind_at) {
            (_, Some(remind_at)) => remind_at,
            (Some(None), None) => None,
            (_, None) => self.remind_at,
        };
        let mut violations = Violations::default();
        if due_at != self.due_at {
            violations.check(future("due_at", due_at, now));
        }
        if remind_at != self.remind_at {
            violations.check(future("remind_at", remind_at, now));
        }
        violations.check(ordered(due_at, remind_at));
        violations.into_result()?;
        if due_at != self.due_at {
            self.due_at = due_at;
            self.due_announced = false;
            self.reminder_announced = false;
        }
        if remind_at != self.remind_at {
            self.remind_at = remind_at;
            self.reminder_announced = false;
        }
        Ok(())
    }

    pub(crate) fn is_overdue(&self, status: TaskStatus, now: DateTime<Utc>) -> bool {
        status != TaskStatus::Completed && self.due_at.is_some_and(|due| due <= now)
    }
}

/// A requested change of the deadline: `Some(None)` clears, `Some(Some(t))` sets, `None` keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct DeadlineChange {
    pub(crate) due_at: Option<Option<DateTime<Utc>>>,
    pub(crate) remind_at: Option<Option<DateTime<Utc>>>,
}

impl DeadlineChange {
    pub(crate) fn is_empty(&self) -> bool {
        self.due_at.is_none() && self.remind_at.is_none()
    }
}

fn future(
    field: &'static str,
    at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<(), FieldViolation> {
    match at {
        Some(at) if at <= now => Err(FieldViolation::new(
            field,
            format!(
                "must be in the future, got {} (now is {})",
                time::format(at),
                time::format(now)
            ),
        )),
        _ => Ok(()),
    }
}

fn ordered(
    due_at: Option<DateTime<Utc>>,
    remind_at: Option<DateTime<Utc>>,
) -> Result<(), FieldViolation> {
    match (due_at, remind_at) {
        (None, Some(_)) => Err(FieldViolation::new(
            "remind_at",
            "needs a due date: set due_at too",
        )),
        (Some(due), Some(remind)) if remind >= due => Err(FieldViolation::new(
            "remind_at",
            format!("must be before due_at ({})", time::format(due)),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;

    fn at(minutes: i64) -> DateTime<Utc> {
        time::parse("2030-01-01T00:00:00").unwrap() + Duration::minutes(minutes)
    }

    #[test]
    fn new_deadlines_are_in_the_future_with_the_reminder_first() {
        let now = at(0);
        assert!(Deadline::parse_new(Some(at(10)), Some(at(5)), now).is_ok());
        assert!(Deadline::parse_new(None, None, now).is_ok());
        let fields = |r: Result<Deadline, Violations>| -> Vec<&str> {
            r.unwrap_err().0.iter().map(|v| v.field).collect()
        };
        assert_eq!(
            fields(Deadline::parse_new(Some(at(-1)), None, now)),
            ["due_at"]
        );
        assert_eq!(
            fields(Deadline::parse_new(Some(at(10)), Some(at(10)), now)),
            ["remind_at"]
        );
        assert_eq!(
            fields(Deadline::parse_new(None, Some(at(5)), now)),
            ["remind_at"]
        );
    }

    #[test]
    fn pending_alarms_follow_status_and_announcements() {
        let mut deadline = Deadline::parse_new(Some(at(10)), Some(at(5)), at(0)).unwrap();
        let pending = TaskStatus::Pending;
        assert_eq!(
            deadline.pending(pending),
            [(Alarm::Due, at(10)), (Alarm::Reminder, at(5))]
        );
        assert!(deadline.pending(TaskStatus::Completed).is_empty());
        assert!(deadline.fires(pending, Alarm::Reminder, at(5)));
        assert!(!deadline.fires(pending, Alarm::Reminder, at(4)), "stale");
        deadline.announce(Alarm::Due);
        assert!(
            deadline.pending(pending).is_empty(),
            "no reminder after due"
        );
        assert!(!deadline.fires(pending, Alarm::Due, at(10)), "once");
    }

    #[test]
    fn moving_the_due_date_announces_again_and_clearing_it_clears_the_reminder() {
        let now = at(0);
        let mut deadline = Deadline::parse_new(Some(at(10)), Some(at(5)), now).unwrap();
        deadline.announce(Alarm::Reminder);
        deadline.announce(Alarm::Due);
        let later = DeadlineChange {
            due_at: Some(Some(at(20))),
            remind_at: None,
        };
        deadline.apply(&later, now).unwrap();
        assert_eq!(
            deadline.pending(TaskStatus::Pending),
            [(Alarm::Due, at(20)), (Alarm::Reminder, at(5))]
        );
        let clear = DeadlineChange {
            due_at: Some(None),
            remind_at: None,
        };
        deadline.apply(&clear, now).unwrap();
        assert_eq!(deadline, Deadline::default());
    }

    #[test]
    fn a_reminder_after_the_current_due_date_is_refused() {
        let now = at(0);
        let mut deadline = Deadline::parse_new(Some(at(10)), None, now).unwrap();
        let late = DeadlineChange {
            due_at: None,
            remind_at: Some(Some(at(15))),
        };
        assert_eq!(
            deadline.apply(&late, now).unwrap_err().0[0].field,
            "remind_at"
        );
        assert_eq!(deadline.remind_at, None, "nothing applied");
        assert!(deadline.is_overdue(TaskStatus::Pending, at(10)));
        assert!(!deadline.is_overdue(TaskStatus::Completed, at(11)));
    }
}
