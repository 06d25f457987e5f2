//! Event delivery: how long after UpdateTaskStatus(completed) returned the notification was
//! recorded by notification-service, and whether each arrived exactly once.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;
use task_api::proto::notification::v1::{
    ListNotificationsRequest, notification_service_client::NotificationServiceClient,
};
use tokio::sync::Semaphore;
use tonic::{service::interceptor::InterceptedService, transport::Channel};

use crate::{load::Sample, ops::Credential};

/// Concurrent ListNotifications calls while checking.
const POLLERS: usize = 8;

/// What the check of one sample found.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// Recorded once, this many milliseconds after the call returned (negative when the
    /// notification was recorded before the response reached the client).
    Once(f64),
    Duplicated(usize),
    Lost,
    /// ListNotifications itself failed.
    Unreadable(String),
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DeliverySummary {
    pub sampled: usize,
    pub delivered: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub unreadable: usize,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub first_problem: Option<String>,
}

impl DeliverySummary {
    pub fn of(deliveries: &[(String, Delivery)]) -> Self {
        let mut latencies: Vec<f64> = Vec::new();
        let mut summary = DeliverySummary {
            sampled: deliveries.len(),
            ..Default::default()
        };
        for (task_id, delivery) in deliveries {
            let problem = match delivery {
                Delivery::Once(ms) => {
                    latencies.push(*ms);
                    summary.delivered += 1;
                    None
                }
                Delivery::Duplicated(n) => {
                    summary.duplicated += 1;
                    Some(format!("task {task_id}: {n} notifications"))
                }
                Delivery::Lost => {
                    summary.lost += 1;
                    Some(format!("task {task_id}: no notification"))
                }
                Delivery::Unreadable(message) => {
                    summary.unreadable += 1;
                    Some(format!("task {task_id}: {message}"))
                }
            };
            if summary.first_problem.is_none() {
                summary.first_problem = problem;
            }
        }
        latencies.sort_by(f64::total_cmp);
        summary.p50_ms = percentile_f64(&latencies, 0.50);
        summary.p99_ms = percentile_f64(&latencies, 0.99);
        summary.max_ms = latencies.last().copied();
        summary
    }
}

fn percentile_f64(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

fn epoch_micros(at: SystemTime) -> i128 {
    match at.duration_since(UNIX_EPOCH) {
        Ok(after) => after.as_micros() as i128,
        Err(before) => -(before.duration().as_micros() as i128),
    }
}

/// Polls notification-service on its app port, presenting its sidecar's token (it takes no
/// other callers), for each sample until its notification is there or `timeout` has passed
/// since the check began.
pub async fn check(
    channel: Channel,
    app_token: Credential,
    samples: Vec<Sample>,
    timeout: Duration,
) -> Vec<(String, Delivery)> {
    let deadline = Instant::now() + timeout;
    let permits = Arc::new(Semaphore::new(POLLERS));
    let mut handles = Vec::with_capacity(samples.len());
    for sample in samples {
        let mut client =
            NotificationServiceClient::with_interceptor(channel.clone(), app_token.clone());
        let permits = permits.clone();
        handles.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await;
            let delivery = poll(&mut client, &sample, deadline).await;
            (sample.task_id, delivery)
        }));
    }
    let mut deliveries = Vec::with_capacity(handles.len());
    for handle in handles {
        match handle.await {
            Ok(found) => deliveries.push(found),
            Err(e) => deliveries.push((String::new(), Delivery::Unreadable(e.to_string()))),
        }
    }
    deliveries
}

async fn poll(
    client: &mut NotificationServiceClient<InterceptedService<Channel, Credential>>,
    sample: &Sample,
    deadline: Instant,
) -> Delivery {
    loop {
        let request = ListNotificationsRequest {
            task_id: sample.task_id.clone(),
        };
        match client.list_notifications(request).await {
            Ok(response) => {
                let notifications = response.into_inner().notifications;
                match notifications.len() {
                    0 => {}
                    1 => {
                        let Some(received) = notifications[0].received_at else {
                            return Delivery::Unreadable(
                                "a notification without received_at".into(),
                            );
                        };
                        let received_micros = i128::from(received.seconds) * 1_000_000
                            + i128::from(received.nanos) / 1_000;
                        let delta = received_micros - epoch_micros(sample.returned_at);
                        return Delivery::Once(delta as f64 / 1_000.0);
                    }
                    n => return Delivery::Duplicated(n),
                }
            }
            Err(status) => {
                if Instant::now() >= deadline {
                    return Delivery::Unreadable(crate::ops::describe(&status));
                }
            }
        }
        if Instant::now() >= deadline {
            return Delivery::Lost;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summarizes_deliveries() {
        let deliveries = vec![
            ("a".to_string(), Delivery::Once(3.0)),
            ("b".to_string(), Delivery::Once(-1.0)),
            ("c".to_string(), Delivery::Lost),
            ("d".to_string(), Delivery::Duplicated(2)),
        ];
        let summary = DeliverySummary::of(&deliveries);
        assert_eq!(summary.sampled, 4);
        assert_eq!(
            (summary.delivered, summary.lost, summary.duplicated),
            (2, 1, 1)
        );
        assert_eq!(summary.p50_ms, Some(-1.0));
        assert_eq!(summary.p99_ms, Some(3.0));
        assert!(summary.first_problem.is_some_and(|p| p.contains("task c")));
    }
}
