//! Refresh (RFC 8656 §7.3): the new lifetime, exactly, raised to the
//! default and capped at the maximum; LIFETIME 0 to delete; and
//! REQUESTED-ADDRESS-FAMILY, which names one relayed address of a dual
//! allocation (443 otherwise).

use super::*;

#[test]
fn refresh_lifetime_sets_the_new_expiry_exactly() {
    let mut h = Harness::authenticated();
    let mut alice = Client::alice("198.51.100.1:40000");
    alice.allocated(&mut h);
    h.advance(secs(100));
    let response = alice.refresh(&mut h, Some(1200));
    assert_success(&response);
    assert_eq!(response.lifetime(), Some(1200));

    h.advance(secs(1199));
    h.timeout();
    assert_eq!(h.server.table().len(), 1, "alive one second before");
    h.advance(SECOND);
    h.timeout();
    assert!(h.server.table().is_empty(), "gone at the new expiry");
    assert_eq!(h.sockets.close_calls.len(), 1);
}

#[test]
fn refresh_without_lifetime_gives_the_default_and_caps_at_the_maximum() {
    let mut h = Harness::authenticated();
    let mut alice = Client::alice("198.51.100.1:40000");
    alice.allocated(&mut h);
    assert_eq!(alice.refresh(&mut h, None).lifetime(), Some(600));
    assert_eq!(alice.refresh(&mut h, Some(5000)).lifetime(), Some(3600));
    assert_eq!(h.allocation(&alice.tuple).expect("alive").expires, h.now.instant + secs(3600));
}

#[test]
fn refresh_lifetime_below_the_default_is_raised_to_the_default() {
    // RFC 8656 §7.3: a non-zero LIFETIME is capped at the maximum and, when
    // below the default, raised to it, as for Allocate.
    let mut h = Harness::authenticated();
    let mut alice = Client::alice("198.51.100.1:40000");
    alice.allocated(&mut h);
    h.advance(secs(100));
    let response = alice.refresh(&mut h, Some(30));
    assert_success(&response);
    assert_eq!(response.lifetime(), Some(600));
    h.advance(secs(599));
    h.timeout();
    assert_eq!(h.server.table().len(), 1, "alive until the default lifetime has passed");
    h.advance(SECOND);
    h.timeout();
    assert!(h.server.table().is_empty());
}

#[test]
fn refresh_with_lifetime_zero_deletes_at_once() {
    let mut h = Harness::authenticated();
    let mut alice = Client::alice("198.51.100.1:40000");
    alice.allocated(&mut h);
    let id = alice.id(&h);
    let response = alice.refresh(&mut h, Some(0));
    assert_success(&response);
    assert_eq!(response.lifetime(), Some(0));
    assert_eq!(h.sockets.close_calls, [RelayId::new(id, false)]);
    assert_eq!((h.quota("alice"), h.total()), (0, 0));
    assert!(h.server.table().is_empty());
    assert_eq!(h.stats().allocations_deleted, 1);
    // The 5-tuple is free again.
    assert_error(&alice.refresh(&mut h, None), 437);
    alice.allocated(&mut h);
}

#[test]
fn refresh_without_allocation_is_437() {
    let mut h = Harness::authenticated();
    let mut alice = Client::alice("198.51.100.1:40000");
    assert_error(&alice.refresh(&mut h, Some(600)), 437);
}

#[test]
fn refresh_with_the_other_address_family_is_443() {
    let mut h = Harness::authenticated();
    let mut alice = Client::alice("198.51.100.1:40000");
    alice.allocated(&mut h);
    let response = alice.request(&mut h, Method::REFRESH, &|w| {
        w.attr(AttrType::REQUESTED_ADDRESS_FAMILY, &family(0x02));
    });
    assert_error(&response, 443);
    let response = alice.request(&mut h, Method::REFRESH, &|w| {
        w.attr(AttrType::REQUESTED_ADDRESS_FAMILY, &family(0x01));
    });
    assert_success(&response);
}

#[test]
fn refresh_with_a_family_and_lifetime_zero_deletes_only_that_relayed_address() {
    let mut h = Harness::new(dual_stack());
    let mut alice = Client::alice("198.51.100.1:40000");
    assert_success(&alice.request(&mut h, Method::ALLOCATE, &dual_allocate));
    let id = alice.id(&h);
    let response = alice.request(&mut h, Method::REFRESH, &|w| {
        w.attr_u32(AttrType::LIFETIME, 0).attr(AttrType::REQUESTED_ADDRESS_FAMILY, &family(0x01));
    });
    assert_success(&response);
    assert_eq!(response.lifetime(), Some(600), "the rest of the allocation lives on");
    assert_eq!(h.sockets.close_calls, [RelayId::new(id, false)]);
    let allocation = h.server.table().get(id).expect("still allocated");
    assert!(allocation.relayed(false).is_none() && allocation.relayed(true).is_some());
    assert_error(&alice.permit(&mut h, &[addr(PEER)]), 443);
    assert_success(&alice.permit(&mut h, &[addr(PEER_V6)]));
    // The IPv4 address is gone: asking for it is 443; the last one goes
    // with the allocation.
    let response = alice.request(&mut h, Method::REFRESH, &|w| {
        w.attr_u32(AttrType::LIFETIME, 0).attr(AttrType::REQUESTED_ADDRESS_FAMILY, &family(0x01));
    });
    assert_error(&response, 443);
    let response = alice.request(&mut h, Method::REFRESH, &|w| {
        w.attr_u32(AttrType::LIFETIME, 0).attr(AttrType::REQUESTED_ADDRESS_FAMILY, &family(0x02));
    });
    assert_success(&response);
    assert_eq!(response.lifetime(), Some(0));
    assert!(h.server.table().is_empty() && h.sockets.open.is_empty() && h.total() == 0);
}
