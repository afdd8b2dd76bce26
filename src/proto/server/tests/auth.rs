//! Authentication (RFC 8489 §9.2, RFC 8656 §5): long-term credentials and
//! their challenge, stale nonces (438), FINGERPRINT, unknown attributes
//! after authentication, SHA-256 keys and MESSAGE-INTEGRITY-SHA256,
//! USERHASH, password-algorithm downgrades, TURN REST credentials, 441 for
//! another user's allocation, and anonymous relaying.

use super::*;

// ---------------------------------------------------------------------------
// Authentication (RFC 8489 §9.2, RFC 8656 §5)
// ---------------------------------------------------------------------------

#[test]
fn fingerprint_is_checked_and_echoed_after_the_signature() {
    let mut h = Harness::authenticated();
    let mut alice = Client::alice("198.51.100.1:40000");
    alice.fingerprint = true;
    // `exchange` verifies MESSAGE-INTEGRITY, which must not cover FINGERPRINT.
    let response = alice.allocate(&mut h);
    assert_success(&response);
    let message = response.message();
    assert_eq!(message.attributes().last().map(|a| a.typ), Some(AttrType::FINGERPRINT));
    assert!(message.verify_fingerprint(), "RFC 8489 §14.7: FINGERPRINT covers the signed response");

    // RFC 8489 §6.3: a wrong FINGERPRINT is dropped silently.
    let mut packet = alice.build(Method::REFRESH, TransactionId::random(), &no_attributes);
    let last = packet.len() - 1;
    packet[last] ^= 1;
    let (outcome, reply) = h.client_packet(&alice.tuple, alice.handle, &packet);
    assert_eq!((outcome, reply.len()), (ClientOutcome::Dropped, 0));
    assert_eq!(h.stats().bad_fingerprint, 1);
}

#[test]
fn wrong_password_is_an_unsigned_401_with_realm_and_nonce() {
    let mut h = Harness::authenticated();
    let mut mallory = Client::new("198.51.100.9:40000", SERVER, Transport::Udp, Some(("alice", "guess")));
    // `request` checks the challenge; `exchange` that the 401 is unsigned
    // and carries REALM and NONCE.
    assert_error(&mallory.allocate(&mut h), 401);
    assert!(h.server.table().is_empty() && h.sockets.open_calls.is_empty());
    assert_eq!(h.stats().auth_failures, 2);
}

#[test]
fn unknown_user_is_401() {
    let mut h = Harness::authenticated();
    let mut carol = Client::new("198.51.100.9:40000", SERVER, Transport::Udp, Some(("carol", "carol-password")));
    assert_error(&carol.allocate(&mut h), 401);
    assert!(h.server.table().is_empty());
}

#[test]
fn message_integrity_without_nonce_is_400() {
    let mut h = Harness::authenticated();
    let alice = Client::alice("198.51.100.1:40000");
    let key = long_term_key_md5("alice", REALM, USERS[0].1);
    let mut packet = Vec::new();
    let tid = TransactionId::random();
    let mut w = MessageWriter::new(&mut packet, MessageType::new(Method::ALLOCATE, Class::Request), tid);
    w.attr(AttrType::REQUESTED_TRANSPORT, &UDP)
        .attr(AttrType::USERNAME, b"alice")
        .attr(AttrType::REALM, REALM.as_bytes())
        .message_integrity(&key);
    w.finish();
    let (outcome, reply) = h.client_packet(&alice.tuple, alice.handle, &packet);
    assert_eq!(outcome, ClientOutcome::Replied);
    let response = Response::new(reply);
    assert_eq!((response.message().method(), response.message().transaction_id()), (Method::ALLOCATE, tid));
    assert_error(&response, 400);
    assert!(!response.message().has_integrity(), "the request was not authenticated, so neither is the answer");
    assert!(h.server.table().is_empty());
}

#[test]
fn unknown_comprehension_required_attributes_are_checked_after_authentication() {
    // RFC 8489 §6.3: authentication checks first, then unknown attributes;
    // §6.3.1: 420 listing the unknown comprehension-required ones; §9.2.4:
    // that 420 is signed like any other answer to an authenticated request.
    let mut h = Harness::authenticated();
    let with_unknown = |w: &mut MessageWriter<'_>| {
        w.attr(AttrType::REQUESTED_TRANSPORT, &UDP).attr(AttrType(0x7F01), b"?").attr(AttrType(0xC001), b"ignored");
    };
    let mut alice = Client::alice("198.51.100.1:40000");
    // `request` checks the unsigned first try is challenged (401), `exchange`
    // that the 420 to the signed retry carries alice's MESSAGE-INTEGRITY.
    let response = alice.request(&mut h, Method::ALLOCATE, &with_unknown);
    assert_error(&response, 420);
    let listed: Vec<AttrType> =
        attr::read_unknown_attributes(response.attr(AttrType::UNKNOWN_ATTRIBUTES).expect("listed"))
            .expect("well-formed")
            .collect();
    assert_eq!(listed, [AttrType(0x7F01)]);
    assert!(h.server.table().is_empty() && h.sockets.open_calls.is_empty());
    // Wrong credentials are reported as such, not as a 420.
    let mut mallory = Client::new("198.51.100.9:40000", SERVER, Transport::Udp, Some(("alice", "guess")));
    assert_error(&mallory.request(&mut h, Method::ALLOCATE, &with_unknown), 401);
}

#[test]
fn expired_nonce_is_438_with_a_fresh_nonce_that_then_works() {
    let mut h = Harness::authenticated();
    let mut alice = Client::alice("198.51.100.1:40000");
    assert_error(&alice.exchange(&mut h, &alice.build(Method::ALLOCATE, TransactionId::random(), &udp_transport)), 401);
    let old = alice.nonce.clone().expect("learnt");

    // Still valid one second before its lifetime ends...
    h.advance(secs(NONCE_LIFETIME - 1));
    let mut probe = alice.on(alice.tuple);
    probe.realm.clone_from(&alice.realm);
    probe.nonce = Some(old.clone());
    assert_error(&probe.exchange(&mut h, &probe.build(Method::REFRESH, TransactionId::random(), &no_attributes)), 437);

    // ...stale at its end.
    h.advance(SECOND);
    let stale = alice.exchange(&mut h, &alice.build(Method::ALLOCATE, TransactionId::random(), &udp_transport));
    assert_error(&stale, 438);
    let fresh = alice.nonce.clone().expect("learnt from the 438");
    assert_ne!(fresh, old);
    assert!(h.server.table().is_empty());
    assert_success(&alice.exchange(&mut h, &alice.build(Method::ALLOCATE, TransactionId::random(), &udp_transport)));
}

#[test]
fn rest_credentials_work_with_either_secret_until_they_expire() {
    let mut h = Harness::authenticated();
    let username = format!("{}:carol", UNIX_START + 3600);
    for (port, secret) in [(40000, REST_SECRET_NEW), (40001, REST_SECRET_OLD)] {
        let password = rest_password(secret, &username);
        let mut carol =
            Client::new(&format!("198.51.100.3:{port}"), SERVER, Transport::Udp, Some((&username, &password)));
        carol.allocated(&mut h);
        assert_eq!(&*h.allocation(&carol.tuple).expect("allocated").username, username);
    }
    // Quotas count the user, not the credential: a fresh EXPIRY brings no fresh quota.
    let renewed = format!("{}:carol", UNIX_START + 7200);
    let password = rest_password(REST_SECRET_NEW, &renewed);
    Client::new("198.51.100.3:40003", SERVER, Transport::Udp, Some((&renewed, &password))).allocated(&mut h);
    assert_eq!(h.quota("carol"), 3);
    assert_eq!(h.quota(&username), 0);

    let unknown_secret = rest_password(b"not-a-secret", &username);
    let mut forger = Client::new("198.51.100.4:40000", SERVER, Transport::Udp, Some((&username, &unknown_secret)));
    assert_error(&forger.allocate(&mut h), 401);

    let expired = format!("{}:carol", UNIX_START - 1);
    let password = rest_password(REST_SECRET_NEW, &expired);
    let mut late = Client::new("198.51.100.3:40002", SERVER, Transport::Udp, Some((&expired, &password)));
    assert_error(&late.allocate(&mut h), 401);

    // A credential valid at allocation time stops working at its expiry.
    let short = format!("{}:dave", UNIX_START + 100);
    let password = rest_password(REST_SECRET_NEW, &short);
    let mut dave = Client::new("198.51.100.5:40000", SERVER, Transport::Udp, Some((&short, &password)));
    dave.allocated(&mut h);
    h.advance(secs(100));
    assert_error(&dave.refresh(&mut h, None), 401);
    assert_eq!(h.server.table().len(), 4);
}

// ---------------------------------------------------------------------------
// RFC 8489 authentication: SHA-256, MESSAGE-INTEGRITY-SHA256, USERHASH
// ---------------------------------------------------------------------------

#[test]
fn rfc8489_client_uses_sha256_and_every_answer_is_signed_with_message_integrity_sha256() {
    let mut h = Harness::authenticated();
    // `exchange` checks each answer carries MESSAGE-INTEGRITY-SHA256 under
    // the SHA-256 key, and no MESSAGE-INTEGRITY.
    let mut alice = Client::alice("198.51.100.1:40000").rfc8489();
    alice.allocated(&mut h);
    assert_success(&alice.permit(&mut h, &[addr(PEER)]));
    assert_success(&alice.bind(&mut h, 0x4000, addr(PEER)));
    assert_success(&alice.refresh(&mut h, None));
    // Errors too: a signed 400 and a signed 437.
    assert_error(&alice.permit(&mut h, &[]), 400);
    assert_success(&alice.refresh(&mut h, Some(0)));
    assert_error(&alice.refresh(&mut h, None), 437);
}

#[test]
fn legacy_md5_client_is_answered_exactly_as_before() {
    let mut h = Harness::authenticated();
    // The default harness client is an RFC 5389 client (as browsers are): it
    // ignores the cookie and PASSWORD-ALGORITHMS, and `exchange` checks it
    // gets MESSAGE-INTEGRITY only.
    let mut alice = Client::alice("198.51.100.1:40000");
    let response = alice.allocate(&mut h);
    assert_success(&response);
    let types: Vec<AttrType> = response.message().attributes().map(|a| a.typ).collect();
    assert_eq!(
        types,
        [AttrType::XOR_RELAYED_ADDRESS, AttrType::LIFETIME, AttrType::XOR_MAPPED_ADDRESS, AttrType::MESSAGE_INTEGRITY]
    );
    assert_error(&alice.allocate(&mut h), 437);
}

/// Alice's Allocate with the password-algorithm attributes given, signed
/// with `key` by a MESSAGE-INTEGRITY-SHA256 of `mac_len` bytes.
fn crafted_allocate(
    client: &Client,
    algorithms: Option<&[u8]>,
    algorithm: Option<PasswordAlgorithm>,
    key: &[u8],
    mac_len: usize,
) -> Vec<u8> {
    let mut packet = Vec::new();
    let mut w =
        MessageWriter::new(&mut packet, MessageType::new(Method::ALLOCATE, Class::Request), TransactionId::random());
    w.attr(AttrType::REQUESTED_TRANSPORT, &UDP)
        .attr(AttrType::USERNAME, b"alice")
        .attr(AttrType::REALM, REALM.as_bytes())
        .attr(AttrType::NONCE, client.nonce.as_deref().expect("challenged first"));
    if let Some(algorithms) = algorithms {
        w.attr(AttrType::PASSWORD_ALGORITHMS, algorithms);
    }
    if let Some(algorithm) = algorithm {
        w.attr(AttrType::PASSWORD_ALGORITHM, &algorithm.attribute_value());
    }
    w.finish();
    crate::proto::stun::integrity::append_truncated_integrity_sha256(&mut packet, key, mac_len);
    packet
}

/// Sends `packet` for `client` and returns the raw answer.
fn send_raw(h: &mut Harness, client: &Client, packet: &[u8]) -> Response {
    let (outcome, reply) = h.client_packet(&client.tuple, client.handle, packet);
    assert_answered(&outcome, &reply);
    Response::new(reply)
}

#[test]
fn password_algorithm_downgrades_are_400_and_allocate_nothing() {
    let mut h = Harness::authenticated();
    let mut alice = Client::alice("198.51.100.1:40000").rfc8489();
    assert_error(&alice.exchange(&mut h, &alice.build(Method::ALLOCATE, TransactionId::random(), &udp_transport)), 401);
    let key = long_term_key_sha256("alice", REALM, USERS[0].1);
    let md5_only: &[u8] = &[0, 1, 0, 0];
    type Case<'a> = (&'a str, Option<&'a [u8]>, Option<PasswordAlgorithm>);
    let cases: [Case<'_>; 4] = [
        ("PASSWORD-ALGORITHMS stripped", None, Some(PasswordAlgorithm::Sha256)),
        ("PASSWORD-ALGORITHM stripped", Some(&OFFERED_ALGORITHMS), None),
        ("SHA-256 struck off the list", Some(md5_only), Some(PasswordAlgorithm::Md5)),
        ("list changed", Some(&[0, 2, 0, 0]), Some(PasswordAlgorithm::Sha256)),
    ];
    for (what, algorithms, algorithm) in cases {
        let response = send_raw(&mut h, &alice, &crafted_allocate(&alice, algorithms, algorithm, &key, 32));
        assert_error(&response, 400);
        assert!(!response.message().has_integrity_sha256() && !response.message().has_integrity(), "{what}");
        assert!(response.attr(AttrType::NONCE).is_none(), "{what}: a 400 is no challenge");
    }
    // An algorithm that is not on the list at all.
    let mut packet = Vec::new();
    let mut w =
        MessageWriter::new(&mut packet, MessageType::new(Method::ALLOCATE, Class::Request), TransactionId::random());
    w.attr(AttrType::REQUESTED_TRANSPORT, &UDP)
        .attr(AttrType::USERNAME, b"alice")
        .attr(AttrType::REALM, REALM.as_bytes())
        .attr(AttrType::NONCE, alice.nonce.as_deref().expect("learnt"))
        .attr(AttrType::PASSWORD_ALGORITHMS, &OFFERED_ALGORITHMS)
        .attr(AttrType::PASSWORD_ALGORITHM, &[0, 3, 0, 0])
        .message_integrity_sha256(&key);
    w.finish();
    assert_error(&send_raw(&mut h, &alice, &packet), 400);
    assert!(h.server.table().is_empty() && h.sockets.open_calls.is_empty());
    // The untouched request goes through.
    let response = send_raw(
        &mut h,
        &alice,
        &crafted_allocate(&alice, Some(&OFFERED_ALGORITHMS), Some(PasswordAlgorithm::Sha256), &key, 32),
    );
    assert_success(&response);
}

#[test]
fn truncated_message_integrity_sha256_is_accepted_and_answered_in_full() {
    let mut h = Harness::authenticated();
    let mut alice = Client::alice("198.51.100.1:40000").rfc8489();
    assert_error(&alice.exchange(&mut h, &alice.build(Method::ALLOCATE, TransactionId::random(), &udp_transport)), 401);
    let key = long_term_key_sha256("alice", REALM, USERS[0].1);
    let packet = crafted_allocate(&alice, Some(&OFFERED_ALGORITHMS), Some(PasswordAlgorithm::Sha256), &key, 16);
    let response = send_raw(&mut h, &alice, &packet);
    assert_success(&response);
    let message = response.message();
    let mac = message.attributes().find(|a| a.typ == AttrType::MESSAGE_INTEGRITY_SHA256).expect("signed");
    assert_eq!(mac.value.len(), 32);
    assert!(message.verify_integrity_sha256(&key));
}

#[test]
fn wrong_message_integrity_sha256_is_an_unsigned_401() {
    let mut h = Harness::authenticated();
    let mut mallory = Client::new("198.51.100.9:40000", SERVER, Transport::Udp, Some(("alice", "guess"))).rfc8489();
    assert_error(&mallory.allocate(&mut h), 401);
    assert_eq!(h.stats().auth_failures, 2);
    assert!(h.server.table().is_empty());
}

#[test]
fn userhash_names_a_static_user_and_the_allocation_is_theirs() {
    let mut h = Harness::authenticated();
    let mut alice = Client::alice("198.51.100.1:40000").rfc8489().hashed();
    alice.allocated(&mut h);
    assert_eq!(&*h.allocation(&alice.tuple).expect("allocated").username, "alice");
    assert_eq!(h.quota("alice"), 1);
    // The same user by name on the same 5-tuple owns it too; bob does not.
    let mut by_name = alice.on(alice.tuple);
    by_name.userhash = false;
    assert_success(&by_name.refresh(&mut h, None));
    let mut bob = Client::bob("198.51.100.1:40000").rfc8489().hashed();
    assert_error(&bob.refresh(&mut h, None), 441);
    // USERHASH works with an RFC 5389-style MD5 request too.
    let mut legacy = Client::bob("198.51.100.2:40000").hashed();
    legacy.allocated(&mut h);
}

#[test]
fn unknown_userhash_is_401() {
    let mut h = Harness::authenticated();
    let mut carol =
        Client::new("198.51.100.9:40000", SERVER, Transport::Udp, Some(("carol", "carol-password"))).rfc8489().hashed();
    assert_error(&carol.allocate(&mut h), 401);
    assert!(h.server.table().is_empty());
}

#[test]
fn rest_credentials_work_with_sha256_by_username_but_not_by_userhash() {
    let mut h = Harness::authenticated();
    let username = format!("{}:carol", UNIX_START + 3600);
    let password = rest_password(REST_SECRET_NEW, &username);
    let mut carol = Client::new("198.51.100.3:40000", SERVER, Transport::Udp, Some((&username, &password))).rfc8489();
    carol.allocated(&mut h);
    assert_eq!(h.quota("carol"), 1);
    // The password is HMAC(secret, username): a hash of the username gives
    // nothing to compute it from.
    let mut hashed =
        Client::new("198.51.100.3:40001", SERVER, Transport::Udp, Some((&username, &password))).rfc8489().hashed();
    assert_error(&hashed.allocate(&mut h), 401);
    assert_eq!(h.server.table().len(), 1);
}

#[test]
fn with_both_integrity_attributes_the_answer_is_signed_with_sha256() {
    let mut h = Harness::authenticated();
    let mut alice = Client::alice("198.51.100.1:40000");
    assert_error(&alice.exchange(&mut h, &alice.build(Method::ALLOCATE, TransactionId::random(), &udp_transport)), 401);
    let key = long_term_key_md5("alice", REALM, USERS[0].1);
    let mut packet = Vec::new();
    let mut w =
        MessageWriter::new(&mut packet, MessageType::new(Method::ALLOCATE, Class::Request), TransactionId::random());
    w.attr(AttrType::REQUESTED_TRANSPORT, &UDP)
        .attr(AttrType::USERNAME, b"alice")
        .attr(AttrType::REALM, REALM.as_bytes())
        .attr(AttrType::NONCE, alice.nonce.as_deref().expect("learnt"))
        .message_integrity(&key)
        .message_integrity_sha256(&key);
    w.finish();
    let response = send_raw(&mut h, &alice, &packet);
    assert_success(&response);
    let message = response.message();
    assert!(message.verify_integrity_sha256(&key) && !message.has_integrity());
}

#[test]
fn another_user_on_an_existing_allocation_is_441() {
    let mut h = Harness::authenticated();
    let mut alice = Client::alice("198.51.100.1:40000");
    let relayed = alice.allocated(&mut h);
    let mut bob = Client::bob("198.51.100.1:40000");
    assert_eq!(bob.tuple, alice.tuple);

    // `exchange` checks each answer is signed with bob's key.
    assert_error(&bob.refresh(&mut h, Some(0)), 441);
    assert_error(&bob.permit(&mut h, &[addr(PEER)]), 441);
    assert_error(&bob.bind(&mut h, 0x4000, addr(PEER)), 441);
    assert_error(&bob.allocate(&mut h), 437);

    let allocation = h.allocation(&alice.tuple).expect("untouched");
    assert_eq!((&*allocation.username, allocation.relayed(false).map(|r| r.addr)), ("alice", Some(relayed)));
    assert_eq!((allocation.permission_count(), allocation.channel_count()), (0, 0));
    assert_eq!(h.quota("bob"), 0);
    assert_success(&alice.refresh(&mut h, None));
}

#[test]
fn anonymous_mode_relays_without_credentials_and_signs_nothing() {
    let mut h = Harness::new(TurnConfig::default());
    let mut anon = Client::anonymous("198.51.100.7:40000");
    // `exchange` checks that no answer to an unsigned request is signed.
    let relayed = anon.allocated(&mut h);
    assert_eq!(relayed.ip(), addr(SERVER).ip());
    assert_eq!(h.quota("198.51.100.7"), 1, "quotas count by client IP");
    assert_success(&anon.permit(&mut h, &[addr(PEER)]));
    assert_success(&anon.bind(&mut h, 0x4000, addr(PEER_B)));
    assert_success(&anon.refresh(&mut h, Some(0)));
    assert!(h.server.table().is_empty());
}
