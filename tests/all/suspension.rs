//! Suspension: an orchestrator that failed is left out of selection while its suspension
//! lasts, even after it has recovered, and is chosen again once the suspension ends.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::ai::wait_discovered;
use crate::failover::{
    attempts, gateway_with, priced_orchestrator, scripted_runner, t2i_call, view_of, Script,
    SHIPPED_T2I_PPU,
};
use crate::support::*;

#[test]
fn a_suspended_orchestrator_is_skipped_until_its_suspension_ends_then_chosen_again() {
    let flaky = Script::failing();
    let steady = Arc::new(Script::default());
    let flaky_runner = scripted_runner(flaky.clone());
    let steady_runner = scripted_runner(steady.clone());
    // The flaky orchestrator is the cheaper one: whenever it is not suspended, the router puts
    // it first (price outweighs its failed attempt in the default router's score).
    let cheap = priced_orchestrator(&flaky_runner.url, 1_000_000);
    let dear = priced_orchestrator(&steady_runner.url, SHIPPED_T2I_PPU);
    let gw = gateway_with(&[&cheap.url, &dear.url], "suspend_secs = 8", "");
    wait_discovered(&gw, 2);

    // Its 500 suspends it.
    let (status, by, body) = t2i_call(&gw);
    assert_eq!((status, by.as_str()), (200, dear.url.as_str()), "{body}");
    assert_eq!(flaky.hits(), 1);
    let view = view_of(&gw, &cheap.url);
    assert!(
        view["suspended_ms"].as_u64().is_some_and(|ms| ms > 0),
        "{view}"
    );

    // It has recovered, but while suspended it is not asked: the dearer one serves.
    flaky.fail.store(false, Ordering::SeqCst);
    let (status, by, body) = t2i_call(&gw);
    assert_eq!((status, by.as_str()), (200, dear.url.as_str()), "{body}");
    assert_eq!(flaky.hits(), 1, "a suspended orchestrator was tried");
    let view = view_of(&gw, &cheap.url);
    assert!(
        view["suspended_ms"].as_u64().is_some_and(|ms| ms > 0),
        "the suspension ended before the second call, so it proves nothing: {view}"
    );

    // Once the suspension is over it is chosen again, first, as its price says.
    let ended = eventually(Duration::from_secs(30), || {
        view_of(&gw, &cheap.url)["suspended_ms"]
            .is_null()
            .then_some(())
    });
    assert!(ended.is_some(), "the suspension never ended");
    let (status, by, body) = t2i_call(&gw);
    assert_eq!((status, by.as_str()), (200, cheap.url.as_str()), "{body}");
    assert_eq!(flaky.hits(), 2);
    assert_eq!(steady.hits(), 2);
    assert_eq!(attempts(&gw, &cheap.url, "ok"), 1.0);
    assert_eq!(attempts(&gw, &cheap.url, "failed"), 1.0);
}
