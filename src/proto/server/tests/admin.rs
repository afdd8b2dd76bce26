//! What the admin API asks of a core: listings with filters, orders and
//! pages; ending one allocation; revoking a user or a REST username.

use super::*;
use crate::proto::server::{AllocationQuery, DeleteReason, MAX_REVOCATIONS, Order, RevokeError};

fn all() -> AllocationQuery {
    AllocationQuery { limit: 100, ..AllocationQuery::default() }
}

fn serials(h: &Harness, query: &AllocationQuery) -> Vec<u64> {
    h.server.allocations(h.now, query).page.iter().map(|a| a.serial).collect()
}

#[test]
fn a_listing_filters_orders_and_pages_and_tells_what_it_matched() {
    let mut h = Harness::authenticated();
    let (mut alice, id) = allocated_alice(&mut h);
    let mut alice_again = Client::alice("198.51.100.1:40001");
    alice_again.allocated(&mut h);
    let mut bob = Client::bob("198.51.100.2:40000");
    bob.allocated(&mut h);
    assert_eq!(serials(&h, &all()), [1, 2, 3], "oldest first");

    let listing = h.server.allocations(h.now, &all());
    assert_eq!(listing.matching, 3);
    let first = &listing.page[0];
    assert_eq!((&*first.user, first.tuple, first.tcp), ("alice", alice.tuple, false));
    assert_eq!(first.relayed, [h.server.table().get(id).expect("live").relayed(false).expect("IPv4").advertised]);
    assert_eq!((first.age, first.remaining), (Duration::ZERO, secs(600)));

    let by = |change: &dyn Fn(&mut AllocationQuery)| {
        let mut query = all();
        change(&mut query);
        query
    };
    assert_eq!(serials(&h, &by(&|q| q.user = Some("alice".into()))), [1, 2]);
    assert_eq!(serials(&h, &by(&|q| q.client_ip = Some(addr("198.51.100.2:0").ip()))), [3]);
    assert_eq!(serials(&h, &by(&|q| q.transport = Some(Transport::Tcp))), Vec::<u64>::new());
    let page = by(&|q| q.limit = 2);
    assert_eq!(serials(&h, &page), [1, 2]);
    assert_eq!(h.server.allocations(h.now, &page).matching, 3, "the count is beyond the page");
    assert_eq!(serials(&h, &by(&|q| (q.limit, q.after) = (2, Some(2)))), [3], "the next page");

    // The busiest first, and the counters as relayed.
    let peer = addr(PEER);
    assert_success(&bob.permit(&mut h, &[peer]));
    bob.send(&mut h, peer, &[0; 300]);
    assert_success(&alice.permit(&mut h, &[peer]));
    alice.send(&mut h, peer, &[0; 100]);
    let busiest = h.server.allocations(h.now, &by(&|q| (q.order, q.limit) = (Order::Traffic, 2)));
    assert_eq!(busiest.page.iter().map(|a| a.serial).collect::<Vec<_>>(), [3, 1]);
    assert_eq!((busiest.page[0].traffic.packets_to_peer, busiest.page[0].traffic.bytes_to_peer), (1, 300));
    assert_eq!(busiest.page[0].permissions, 1);

    h.advance(secs(60));
    let aged = &h.server.allocations(h.now, &all()).page[0];
    assert_eq!((aged.age, aged.remaining), (secs(60), secs(540)));
}

#[test]
fn ending_an_allocation_frees_it_and_tells_observers_why() {
    let mut h = Harness::authenticated();
    let (mut alice, id) = allocated_alice(&mut h);
    h.take_observed();
    let serial = h.server.table().get(id).expect("live").serial;
    assert!(!h.server.end_allocation(serial + 1000), "no such serial");
    assert!(h.server.end_allocation(serial));
    h.settle();
    assert!(h.server.table().is_empty());
    assert_eq!(h.quota("alice"), 0);
    assert!(matches!(h.take_observed().as_slice(), [Event::AllocationDeleted { reason: DeleteReason::Ended, .. }]));
    assert_eq!(h.stats().allocations_ended, 1);
    assert!(!h.server.end_allocation(serial), "ended once");
    assert_error(&alice.refresh(&mut h, None), 437);
    // A new allocation in the same slot has a serial of its own.
    alice.allocated(&mut h);
    let id_again = alice.id(&h);
    assert_eq!(id_again, id, "the slot is reused");
    assert_ne!(h.server.table().get(id_again).expect("live").serial, serial);
    h.check_invariants();
}

#[test]
fn a_revoked_user_is_refused_until_let_in_again_and_others_carry_on() {
    let mut h = Harness::authenticated();
    let (mut alice, _) = allocated_alice(&mut h);
    let mut bob = Client::bob("198.51.100.2:40000");
    bob.allocated(&mut h);
    h.take_observed();
    assert_eq!(h.server.revoke("alice"), Ok(1));
    h.settle();
    assert!(matches!(h.take_observed().as_slice(), [Event::AllocationDeleted { reason: DeleteReason::Revoked, .. }]));
    assert_eq!(h.server.table().len(), 1, "bob's stays");
    // Refused as an unknown user: 401 with a challenge, even with a nonce
    // that was good a moment ago.
    let refused = alice.allocate(&mut h);
    assert_error(&refused, 401);
    assert!(refused.attr(AttrType::NONCE).is_some() && refused.attr(AttrType::REALM).is_some());
    assert!(refused.attr(AttrType::MESSAGE_INTEGRITY).is_none(), "nothing signed with a revoked key");
    assert_error(&alice.allocate(&mut h), 401);
    assert_eq!(h.stats().revoked_refusals, 2);
    assert_success(&bob.refresh(&mut h, None));
    assert_eq!(h.server.revoked().collect::<Vec<_>>(), ["alice"]);

    assert!(h.server.unrevoke("alice"));
    assert!(!h.server.unrevoke("alice"), "once");
    alice.allocated(&mut h);
    assert_eq!(h.server.revoke(""), Err(RevokeError::Empty));
    h.check_invariants();
}

#[test]
fn revoking_a_user_covers_its_rest_usernames_and_one_rest_username_only_itself() {
    let mut h = Harness::authenticated();
    let rest = |n: u64, port: u16| {
        let username = format!("{}:carol", UNIX_START + n);
        let password = rest_password(REST_SECRET_NEW, &username);
        Client::new(&format!("198.51.100.3:{port}"), SERVER, Transport::Udp, Some((&username, &password)))
    };
    let (mut first, mut second) = (rest(3600, 40000), rest(7200, 40001));
    first.allocated(&mut h);
    second.allocated(&mut h);
    let leaked = format!("{}:carol", UNIX_START + 3600);
    assert_eq!(h.server.revoke(&leaked), Ok(1), "that credential's allocation only");
    h.settle();
    assert_error(&first.allocate(&mut h), 401);
    assert_success(&second.refresh(&mut h, None));
    assert_eq!(h.server.allocations(h.now, &AllocationQuery { user: Some("carol".into()), ..all() }).matching, 1);
    assert_eq!(h.server.revoke("carol"), Ok(1), "the user: every credential of it");
    h.settle();
    assert_error(&rest(9000, 40002).allocate(&mut h), 401);
    assert!(h.server.table().is_empty());
}

#[test]
fn revocations_are_bounded() {
    let mut h = Harness::authenticated();
    for n in 0..MAX_REVOCATIONS {
        assert_eq!(h.server.revoke(&format!("user{n}")), Ok(0));
    }
    assert_eq!(h.server.revoke("one-more"), Err(RevokeError::Full));
    assert_eq!(h.server.revoke("user0"), Ok(0), "an existing name is no new entry");
}

#[test]
fn serials_are_unique_across_workers_and_name_their_worker() {
    let mut h = Harness::authenticated();
    h.server.set_worker(1, 3);
    let (_, id) = allocated_alice(&mut h);
    let mut bob = Client::bob("198.51.100.2:40000");
    bob.allocated(&mut h);
    let id_bob = bob.id(&h);
    let serial = |id| h.server.table().get(id).expect("live").serial;
    assert_eq!((serial(id), serial(id_bob)), (4, 7), "worker 1 of 3: 1 + 3n");
    assert_eq!(serial(id) % 3, 1);
}
