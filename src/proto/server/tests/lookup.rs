//! Users from a store (`server::lookup`): a request for a user the worker
//! has no answer for waits, is asked for once, and is answered when the
//! store is — signed with the stored key, 401 for an absent user, 500 when
//! the store cannot say or is too slow; what waits is bounded; only a
//! request with a fresh nonce of ours is asked for; a user with an
//! allocation never waits again.

use super::*;
use crate::proto::lookup::StoreAnswer;
use crate::proto::server::{LOOKUP_WAIT, MAX_PARKED_PER_NAME};

/// A user only the store knows.
const STORED: (&str, &str) = ("carol", "carol-password");

fn harness() -> Harness {
    let auth = authenticator().with_store_users();
    Harness::new(TurnConfig { auth: Some(auth), ..TurnConfig::default() })
}

fn carol(client: &str) -> Client {
    Client::new(client, SERVER, Transport::Udp, Some(STORED))
}

fn carol_keys() -> StoreAnswer {
    StoreAnswer::Found(UserKeys::from_md5_key(long_term_key_md5(STORED.0, REALM, STORED.1)))
}

/// Gets a nonce the way a client does: an unsigned Allocate and its 401.
fn challenged(h: &mut Harness, client: &mut Client) {
    let challenge = client.exchange(h, &client.build(Method::ALLOCATE, TransactionId::random(), &udp_transport));
    assert_error(&challenge, 401);
}

/// The lookups the server asked for since the last call.
fn lookups(h: &mut Harness) -> Vec<String> {
    std::mem::take(&mut h.sockets.lookups)
        .into_iter()
        .map(|(realm, name)| {
            assert_eq!(&*realm, REALM);
            name.into()
        })
        .collect()
}

/// Sends a signed Allocate that must wait: no answer now, one lookup.
fn parked_allocate(h: &mut Harness, client: &Client) -> Vec<u8> {
    let packet = client.build(Method::ALLOCATE, TransactionId::random(), &udp_transport);
    let (outcome, reply) = h.client_packet(&client.tuple, client.handle, &packet);
    assert_eq!(outcome, ClientOutcome::Deferred);
    assert!(reply.is_empty());
    packet
}

/// The store answers; the message the server then wrote for `client`.
#[track_caller]
fn answered(h: &mut Harness, client: &Client, answer: Option<StoreAnswer>) -> Response {
    h.server.handle_user_lookup(h.now, STORED.0, answer);
    h.settle_and_keep();
    let (transmit, bytes) = h.take_sent().expect("an answer once the store answered");
    assert_eq!((transmit.tuple, transmit.client), (client.tuple, client.handle));
    assert!(h.take_sent().is_none(), "one answer");
    Response::new(bytes)
}

#[test]
fn a_stored_user_waits_for_the_store_once_then_relays_at_once() {
    let mut h = harness();
    let mut client = carol("198.51.100.1:5000");
    challenged(&mut h, &mut client);
    assert!(lookups(&mut h).is_empty(), "an unsigned request is never asked for");
    parked_allocate(&mut h, &client);
    assert_eq!(lookups(&mut h), ["carol"]);
    assert_eq!(h.server.parked_requests(), 1);

    let response = answered(&mut h, &client, Some(carol_keys()));
    assert_success(&response);
    let key = client.key().expect("a key");
    assert!(response.message().verify_integrity(&key), "signed with the stored key");
    assert_eq!(h.server.parked_requests(), 0);

    // Remembered: the next request is answered now.
    assert_success(&client.refresh(&mut h, Some(600)));
    let other = carol("198.51.100.2:5000");
    let mut other = other;
    assert_success(&other.allocate(&mut h));
    assert!(lookups(&mut h).is_empty());
    assert_eq!(h.stats().lookups, 1);
}

#[test]
fn an_absent_user_gets_401_and_a_store_that_cannot_say_500() {
    let mut h = harness();
    let mut client = carol("198.51.100.1:5000");
    challenged(&mut h, &mut client);
    parked_allocate(&mut h, &client);
    let response = answered(&mut h, &client, Some(StoreAnswer::Absent));
    assert_error(&response, 401);
    assert!(response.attr(AttrType::NONCE).is_some(), "with a challenge");
    // Absence is remembered for a while: no second lookup.
    let response = client.exchange(&mut h, &client.build(Method::ALLOCATE, TransactionId::random(), &udp_transport));
    assert_error(&response, 401);
    assert!(lookups(&mut h).len() == 1);

    let mut h = harness();
    let mut client = carol("198.51.100.2:5000");
    challenged(&mut h, &mut client);
    parked_allocate(&mut h, &client);
    let response = answered(&mut h, &client, None);
    assert_error(&response, 500);
    assert!(!response.message().has_integrity(), "unsigned: the key is unknown");
    assert_eq!(h.stats().lookups_failed, 1);
}

#[test]
fn a_store_too_slow_gets_500_after_the_wait_and_its_late_answer_is_kept() {
    let mut h = harness();
    let mut client = carol("198.51.100.1:5000");
    challenged(&mut h, &mut client);
    parked_allocate(&mut h, &client);
    h.advance(LOOKUP_WAIT - secs(1));
    h.timeout();
    assert!(h.take_sent().is_none(), "still waiting");
    h.advance(secs(1));
    h.timeout();
    let (_, bytes) = h.take_sent().expect("answered at the deadline");
    assert_error(&Response::new(bytes), 500);
    // The late answer is remembered for the client's retry.
    h.server.handle_user_lookup(h.now, STORED.0, Some(carol_keys()));
    h.settle_and_keep();
    assert!(h.take_sent().is_none(), "nothing waits any more");
    let response = client.exchange(&mut h, &client.build(Method::ALLOCATE, TransactionId::random(), &udp_transport));
    assert_success(&response);
}

#[test]
fn what_waits_is_bounded_and_a_retransmission_waits_once() {
    let mut h = harness();
    let mut client = carol("198.51.100.1:5000");
    challenged(&mut h, &mut client);
    let packet = parked_allocate(&mut h, &client);
    let (outcome, _) = h.client_packet(&client.tuple, client.handle, &packet);
    assert_eq!(outcome, ClientOutcome::Dropped, "a retransmission is not parked twice");
    for n in 1..MAX_PARKED_PER_NAME {
        let mut more = carol(&format!("198.51.100.1:{}", 6000 + n));
        challenged(&mut h, &mut more);
        parked_allocate(&mut h, &more);
    }
    let mut one_too_many = carol("198.51.100.1:7000");
    challenged(&mut h, &mut one_too_many);
    let packet = one_too_many.build(Method::ALLOCATE, TransactionId::random(), &udp_transport);
    let (outcome, _) = h.client_packet(&one_too_many.tuple, one_too_many.handle, &packet);
    assert_eq!(outcome, ClientOutcome::Dropped);
    assert_eq!(h.stats().lookups_refused, 1);
    assert_eq!(lookups(&mut h), ["carol"], "one lookup for all who wait");
    h.server.handle_user_lookup(h.now, STORED.0, Some(carol_keys()));
    let answers = h.settle();
    assert_eq!(answers.len(), MAX_PARKED_PER_NAME, "every parked request is answered once");
}

#[test]
fn only_a_request_with_a_fresh_nonce_of_ours_is_asked_for() {
    let mut h = harness();
    let mut client = carol("198.51.100.1:5000");
    client.realm = Some(REALM.to_owned());
    client.nonce = Some(b"obMatJos2AAABforged-nonce-of-the-right-length".to_vec());
    let response = client.exchange(&mut h, &client.build(Method::ALLOCATE, TransactionId::random(), &udp_transport));
    assert_error(&response, 438);
    assert!(lookups(&mut h).is_empty());
    h.advance(secs(NONCE_LIFETIME + 1));
    let mut late = carol("198.51.100.1:5001");
    challenged(&mut h, &mut late);
    h.advance(secs(NONCE_LIFETIME + 1));
    let response = late.exchange(&mut h, &late.build(Method::ALLOCATE, TransactionId::random(), &udp_transport));
    assert_error(&response, 438);
    assert!(lookups(&mut h).is_empty(), "an expired nonce is not worth a lookup");
}

#[test]
fn a_closed_connection_leaves_nothing_waiting() {
    let mut h = harness();
    let mut client = Client::new("198.51.100.1:5000", SERVER, Transport::Tcp, Some(STORED));
    assert!(h.connection_opened(&client.tuple));
    challenged(&mut h, &mut client);
    parked_allocate(&mut h, &client);
    h.connection_closed(&client.tuple);
    assert_eq!(h.server.parked_requests(), 0);
    h.server.handle_user_lookup(h.now, STORED.0, Some(carol_keys()));
    assert!(h.settle().is_empty(), "no answer to a connection that is gone");
    assert_eq!(h.server.table().len(), 0, "and no allocation for it");
}

#[test]
fn a_user_with_an_allocation_never_waits_and_is_refreshed_in_the_background() {
    let mut h = harness();
    let mut client = carol("198.51.100.1:5000");
    challenged(&mut h, &mut client);
    parked_allocate(&mut h, &client);
    assert_success(&answered(&mut h, &client, Some(carol_keys())));
    lookups(&mut h);
    // The store's feed reconnected: anything may have changed.
    h.server.handle_store_outdated();
    assert_success(&client.refresh(&mut h, Some(600)));
    assert_eq!(lookups(&mut h), ["carol"], "asked again, without waiting");
    assert_success(&client.refresh(&mut h, Some(600)));
    assert!(lookups(&mut h).is_empty(), "one refresh at a time");
    // The store now says carol is gone: her allocation's next request is refused.
    h.server.handle_user_changed(h.now, STORED.0, StoreAnswer::Absent);
    assert_error(&client.refresh(&mut h, Some(600)), 401);
}

#[test]
fn stored_users_are_offered_md5_only_and_configured_users_still_work() {
    let mut h = harness();
    let mut alice = Client::alice("198.51.100.1:5000");
    // `exchange` checks the 401 offers MD5 alone (see the harness).
    assert_success(&alice.allocate(&mut h));
    let mut modern = Client::alice("198.51.100.2:5000").rfc8489();
    challenged(&mut h, &mut modern);
    let packet = modern.build(Method::ALLOCATE, TransactionId::random(), &udp_transport);
    let (outcome, reply) = h.client_packet(&modern.tuple, modern.handle, &packet);
    assert_answered(&outcome, &reply);
    assert_error(&Response::new(reply), 400);
    assert!(lookups(&mut h).is_empty(), "a configured user is never asked for");
}

#[test]
fn rest_secrets_from_the_store_authenticate_rest_usernames_without_a_lookup() {
    let auth = Authenticator::new(REALM.to_owned(), StaticCredentials::default(), [7; 32], NONCE_LIFETIME);
    let mut h = Harness::new(TurnConfig { auth: Some(auth.with_store_users()), ..TurnConfig::default() });
    let username = format!("{}:dave", UNIX_START + 3600);
    let password = rest_password(b"stored-secret", &username);
    let mut client = Client::new("198.51.100.1:5000", SERVER, Transport::Udp, Some((&username, &password)));
    h.server.set_store_secrets(vec![b"stored-secret".to_vec()]);
    assert_success(&client.allocate(&mut h));
    assert!(lookups(&mut h).is_empty());
}
