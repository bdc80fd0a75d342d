use super::*;

fn utc(text: &str) -> u64 {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .timestamp_millis() as u64
}

fn every_second() -> Recurrence {
    Recurrence::parse("* * * * * *", None).unwrap()
}

#[test]
fn five_and_six_field_expressions_parse_and_tick() {
    let minutes = Recurrence::parse("*/15 * * * *", None).unwrap();
    assert_eq!(
        minutes.next_after(utc("2026-12-01T10:07:30Z")),
        Some(utc("2026-12-01T10:15:00Z"))
    );
    let seconds = Recurrence::parse("*/10 * * * * *", Some("UTC")).unwrap();
    assert_eq!(
        seconds.next_after(utc("2026-12-01T10:07:30Z")),
        Some(utc("2026-12-01T10:07:40Z"))
    );
    // Strictly after: a tick is not its own next tick.
    assert_eq!(
        seconds.next_after(utc("2026-12-01T10:07:40Z")),
        Some(utc("2026-12-01T10:07:50Z"))
    );
    assert_eq!(
        seconds.previous_before(utc("2026-12-01T10:07:40Z")),
        Some(utc("2026-12-01T10:07:30Z"))
    );
}

#[test]
fn bad_cron_unknown_zone_and_impossible_dates_are_refused_with_the_input_named() {
    let err = Recurrence::parse("61 * * * *", None).unwrap_err();
    assert!(matches!(err, ScheduleError::BadCron { .. }), "{err:?}");
    assert!(err.to_string().contains("61 * * * *"), "{err}");
    let err = Recurrence::parse("not cron", None).unwrap_err();
    assert!(matches!(err, ScheduleError::BadCron { .. }), "{err:?}");
    let err = Recurrence::parse("0 0 * * *", Some("Mars/Olympus")).unwrap_err();
    assert_eq!(err, ScheduleError::UnknownZone("Mars/Olympus".into()));
    assert!(err.to_string().contains("Mars/Olympus"));
    assert!(Recurrence::parse("0 0 30 2 *", None).is_err());
}

#[test]
fn a_zone_moves_the_tick_to_local_midnight() {
    let paris = Recurrence::parse("0 0 * * *", Some("Europe/Paris")).unwrap();
    // Paris is UTC+1 in December: local midnight is 23:00 UTC the day before.
    assert_eq!(
        paris.next_after(utc("2026-12-01T12:00:00Z")),
        Some(utc("2026-12-01T23:00:00Z"))
    );
    assert_eq!(
        paris.format(utc("2026-12-01T23:00:00Z")),
        "2026-12-02T00:00:00+01:00"
    );
}

#[test]
fn spring_forward_runs_a_fixed_time_tick_in_the_gap_once_right_after_the_gap() {
    // Europe/Paris skips 02:00-03:00 local on 2026-03-29 (01:00Z): 02:30 does not exist.
    let r = Recurrence::parse("30 2 * * *", Some("Europe/Paris")).unwrap();
    let ticks = r.ticks(utc("2026-03-27T00:00:00Z"), utc("2026-03-31T00:00:00Z"), 10);
    assert_eq!(
        ticks,
        vec![
            utc("2026-03-27T01:30:00Z"), // 02:30 CET
            utc("2026-03-28T01:30:00Z"),
            utc("2026-03-29T01:00:00Z"), // 03:00 CEST, the first instant after the gap
            utc("2026-03-30T00:30:00Z"), // 02:30 CEST
        ]
    );
}

#[test]
fn fall_back_runs_a_fixed_time_tick_in_the_overlap_once() {
    // Europe/Paris repeats 02:00-03:00 local on 2026-10-25: 02:30 happens twice.
    let r = Recurrence::parse("30 2 * * *", Some("Europe/Paris")).unwrap();
    let ticks = r.ticks(utc("2026-10-24T00:00:00Z"), utc("2026-10-26T23:00:00Z"), 10);
    assert_eq!(
        ticks,
        vec![
            utc("2026-10-24T00:30:00Z"), // 02:30 CEST
            utc("2026-10-25T00:30:00Z"), // the first 02:30 only
            utc("2026-10-26T01:30:00Z"), // 02:30 CET
        ]
    );
}

#[test]
fn an_interval_pattern_keeps_real_time_spacing_across_fall_back() {
    let r = Recurrence::parse("*/30 * * * *", Some("Europe/Paris")).unwrap();
    let ticks = r.ticks(
        utc("2026-10-24T23:00:00Z"),
        utc("2026-10-25T03:00:00Z"),
        100,
    );
    let gaps: Vec<u64> = ticks.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(!gaps.is_empty());
    assert!(
        gaps.iter().all(|g| *g == 30 * 60 * 1000),
        "every gap should be 30 real minutes: {:?}",
        ticks.iter().map(|t| r.format(*t)).collect::<Vec<_>>()
    );
}

#[test]
fn ticks_are_inclusive_at_both_ends_and_bounded() {
    let r = every_second();
    let from = utc("2026-12-01T00:00:00Z");
    let to = utc("2026-12-01T00:00:04Z");
    assert_eq!(r.ticks(from, to, 100).len(), 5);
    assert_eq!(r.ticks(from, to, 3), vec![from, from + 1000, from + 2000]);
    assert_eq!(r.ticks(from + 1, to, 100).first(), Some(&(from + 1000)));
    assert!(r.ticks(to, from, 100).is_empty());
    let year = r.ticks(from, from + 366 * 86_400_000, usize::MAX);
    assert_eq!(year.len(), MAX_TICKS_PER_CALL);
}

#[test]
fn the_interval_of_a_run_is_the_slice_since_the_previous_tick() {
    let r = Recurrence::parse("0 0 * * *", None).unwrap();
    let tick = utc("2026-12-02T00:00:00Z");
    assert_eq!(
        r.interval(tick),
        Interval {
            logical_date: tick,
            start: utc("2026-12-01T00:00:00Z"),
            end: tick
        }
    );
}

#[test]
fn catchup_lists_every_missed_tick_oldest_first_and_without_it_only_the_latest() {
    let r = every_second();
    let last = utc("2026-12-01T00:00:00Z");
    let now = utc("2026-12-01T00:00:05.500Z");
    let all = due_ticks(&r, last, now, None, true, 100);
    assert_eq!(all, (1..=5).map(|s| last + s * 1000).collect::<Vec<_>>());
    assert_eq!(
        due_ticks(&r, last, now, None, false, 100),
        vec![last + 5000]
    );
    // Nothing due yet, or nothing new since the last tick dealt with.
    assert!(due_ticks(&r, last, last + 999, None, true, 100).is_empty());
    assert!(due_ticks(&r, last, last + 999, None, false, 100).is_empty());
    // Never past `end`.
    let end = last + 2000;
    assert_eq!(
        due_ticks(&r, last, now, Some(end), true, 100),
        vec![last + 1000, last + 2000]
    );
    assert_eq!(due_ticks(&r, last, now, Some(end), false, 100), vec![end]);
    assert_eq!(due_ticks(&r, last, now, None, true, 2).len(), 2);
    assert!(due_ticks(&r, u64::MAX, now, None, true, 100).is_empty());
}

#[test]
fn a_tick_below_max_running_starts_whatever_the_policy() {
    for policy in OverrunPolicy::ALL {
        assert_eq!(
            on_tick(policy, 1, 0, LastOutcome::None),
            TickAction::Start,
            "{policy}"
        );
        assert_eq!(
            on_tick(policy, 3, 2, LastOutcome::Succeeded),
            TickAction::Start,
            "{policy}"
        );
    }
}

#[test]
fn each_policy_at_max_running() {
    let at_max = |policy| on_tick(policy, 2, 2, LastOutcome::Succeeded);
    assert_eq!(at_max(OverrunPolicy::Skip), TickAction::Skip);
    assert_eq!(at_max(OverrunPolicy::StartNew), TickAction::Hold);
    assert_eq!(at_max(OverrunPolicy::Delay), TickAction::Hold);
    assert_eq!(at_max(OverrunPolicy::DelayUntilSuccess), TickAction::Hold);
    assert_eq!(
        at_max(OverrunPolicy::AbortRunning),
        TickAction::AbortThenStart(1)
    );
    // Over the limit (max_running lowered while runs go): abort enough to fit.
    assert_eq!(
        on_tick(OverrunPolicy::AbortRunning, 1, 3, LastOutcome::None),
        TickAction::AbortThenStart(3)
    );
    // 0 is read as 1.
    assert_eq!(
        on_tick(OverrunPolicy::Skip, 0, 1, LastOutcome::None),
        TickAction::Skip
    );
    assert_eq!(
        on_tick(OverrunPolicy::Skip, 0, 0, LastOutcome::None),
        TickAction::Start
    );
}

#[test]
fn delay_until_success_holds_after_a_failure_even_with_room() {
    assert_eq!(
        on_tick(
            OverrunPolicy::DelayUntilSuccess,
            1,
            0,
            LastOutcome::Unsuccessful
        ),
        TickAction::Hold
    );
    assert_eq!(
        on_tick(
            OverrunPolicy::DelayUntilSuccess,
            1,
            0,
            LastOutcome::Succeeded
        ),
        TickAction::Start
    );
    // The other policies do not look at the last outcome.
    assert_eq!(
        on_tick(OverrunPolicy::Delay, 1, 0, LastOutcome::Unsuccessful),
        TickAction::Start
    );
}

#[test]
fn policies_round_trip_through_their_names_and_serde() {
    for policy in OverrunPolicy::ALL {
        assert_eq!(policy.as_str().parse::<OverrunPolicy>(), Ok(policy));
        let json = serde_json::to_string(&policy).unwrap();
        assert_eq!(json, format!("\"{}\"", policy.as_str()));
        assert_eq!(
            serde_json::from_str::<OverrunPolicy>(&json).unwrap(),
            policy
        );
    }
    let err = "sometimes".parse::<OverrunPolicy>().unwrap_err();
    assert!(
        err.contains("sometimes") && err.contains("delay_until_success"),
        "{err}"
    );
    assert_eq!(OverrunPolicy::default(), OverrunPolicy::Skip);
}

#[test]
fn times_parse_as_rfc3339_or_as_midnight_in_the_zone() {
    let paris = parse_zone("Europe/Paris").unwrap();
    assert_eq!(
        parse_time("2026-12-01T06:00:00Z", paris),
        Ok(utc("2026-12-01T06:00:00Z"))
    );
    assert_eq!(
        parse_time("2026-12-01", paris),
        Ok(utc("2026-11-30T23:00:00Z"))
    );
    assert_eq!(
        parse_time("2026-12-01", chrono_tz::UTC),
        Ok(utc("2026-12-01T00:00:00Z"))
    );
    // Santiago skipped midnight on 2026-09-06 (00:00 -> 01:00): the day starts at 01:00.
    let santiago = parse_zone("America/Santiago").unwrap();
    assert_eq!(
        parse_time("2026-09-06", santiago),
        Ok(utc("2026-09-06T04:00:00Z"))
    );
    let err = parse_time("yesterday", paris).unwrap_err();
    assert!(err.to_string().contains("yesterday"), "{err}");
    assert!(parse_time("2026-13-01", paris).is_err());
}

#[test]
fn end_before_start_is_refused() {
    let zone = chrono_tz::UTC;
    let start = utc("2026-12-02T00:00:00Z");
    let end = utc("2026-12-01T00:00:00Z");
    let err = check_window(Some(start), Some(end), zone).unwrap_err();
    assert!(matches!(err, ScheduleError::EndBeforeStart { .. }));
    assert!(err.to_string().contains("2026-12-01T00:00:00Z"), "{err}");
    assert!(check_window(Some(end), Some(start), zone).is_ok());
    assert!(check_window(None, Some(end), zone).is_ok());
}

#[test]
fn times_inside_a_second_see_that_second_as_before_them() {
    let r = every_second();
    let t = utc("2026-12-01T00:00:05Z");
    assert_eq!(r.previous_before(t + 500), Some(t));
    assert_eq!(r.previous_before(t), Some(t - 1000));
    assert_eq!(r.next_after(t + 500), Some(t + 1000));
    assert_eq!(r.next_after(t - 1), Some(t));
}
