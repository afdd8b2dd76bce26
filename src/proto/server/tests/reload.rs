//! A reloaded configuration (`Server::replace_config`): its rules apply to
//! what is asked for next, what exists stays as it was granted, the
//! authenticator keeps its nonce key, and the mode the server started in
//! cannot change.

use super::*;
use crate::proto::policy::PeerPolicy;
use crate::proto::rate_limit::RateLimit;

/// Another nonce key than [`authenticator`]'s: a reload must not take it.
const RELOADED_NONCE_KEY: [u8; 32] = [9; 32];

/// Long-term credentials for `users`, signed with [`RELOADED_NONCE_KEY`],
/// as a reload builds them.
fn reloaded_authenticator(users: &[(&str, &str)]) -> Authenticator {
    let users = users
        .iter()
        .map(|(user, password)| ((*user).to_owned(), UserKeys::from_password(user, REALM, password)))
        .collect();
    let store = StaticCredentials::new(REALM, users, vec![REST_SECRET_NEW.to_vec()]);
    Authenticator::new(REALM.to_owned(), store, RELOADED_NONCE_KEY, NONCE_LIFETIME)
}

/// `turn` with the configured users, as a reload hands it over.
fn reloaded(turn: TurnConfig) -> ServerConfig {
    ServerConfig { turn: Some(TurnConfig { auth: Some(reloaded_authenticator(USERS)), ..turn }), ..Default::default() }
}

#[track_caller]
fn replace(h: &mut Harness, config: ServerConfig) {
    assert!(h.server.replace_config(config), "the same mode: taken");
    h.settle_and_keep();
}

/// A Binding request from `tuple`, and whether it was answered.
fn binding_answered(h: &mut Harness, tuple: &FiveTuple) -> Option<Response> {
    let mut packet = Vec::new();
    MessageWriter::new(&mut packet, MessageType::new(Method::BINDING, Class::Request), TransactionId::random())
        .finish();
    let (outcome, reply) = h.client_packet(tuple, ClientHandle(0), &packet);
    (outcome == ClientOutcome::Replied).then(|| Response::new(reply))
}

#[test]
fn lowered_caps_refuse_new_permissions_and_channels_and_keep_those_installed() {
    let mut h = Harness::authenticated();
    let (mut alice, id) = allocated_alice(&mut h);
    assert_success(&alice.permit(&mut h, &[addr(PEER), addr(PEER_B)]));
    assert_success(&alice.bind(&mut h, 0x4000, addr(PEER)));

    replace(&mut h, reloaded(TurnConfig { max_permissions: 1, max_channels: 1, ..TurnConfig::default() }));
    assert_error(&alice.permit(&mut h, &[addr(PEER_C)]), 508);
    assert_error(&alice.bind(&mut h, 0x4001, addr(PEER_B)), 508);
    // What is installed stays, relays and can be refreshed.
    assert_success(&alice.permit(&mut h, &[addr(PEER), addr(PEER_B)]));
    assert_success(&alice.bind(&mut h, 0x4000, addr(PEER)));
    assert!(h.peer_packet(id, addr(PEER_B), b"still permitted").0.is_some());
    let (outcome, packet) = alice.channel_data(&mut h, 0x4000, b"still bound");
    assert_forwarded(&outcome, &packet, id, addr(PEER), b"still bound");
    assert_eq!(h.server.table().get(id).expect("alive").permission_count(), 2);

    // A raised cap takes new ones again.
    replace(&mut h, reloaded(TurnConfig::default()));
    assert_success(&alice.permit(&mut h, &[addr(PEER_C)]));
    assert_success(&alice.bind(&mut h, 0x4001, addr(PEER_B)));
}

#[test]
fn a_new_peer_policy_applies_to_new_permissions_and_sends_while_installed_ones_expire() {
    let mut h = Harness::authenticated();
    let (mut alice, id) = allocated_alice(&mut h);
    assert_success(&alice.permit(&mut h, &[addr(PEER)]));
    assert_success(&alice.bind(&mut h, 0x4000, addr(PEER_B)));
    let deny = |peer: &str| vec![format!("{}/32", addr(peer).ip()).parse().expect("CIDR literal")];
    let policy = PeerPolicy::new(Vec::new(), [deny(PEER), deny(PEER_B), deny(PEER_C)].concat(), Vec::new());

    replace(&mut h, reloaded(TurnConfig { policy, ..TurnConfig::default() }));
    assert_error(&alice.permit(&mut h, &[addr(PEER)]), 403);
    assert_error(&alice.permit(&mut h, &[addr(PEER_C)]), 403);
    assert_error(&alice.bind(&mut h, 0x4000, addr(PEER_B)), 403);
    assert_eq!(alice.send(&mut h, addr(PEER), b"refused").0, ClientOutcome::Dropped, "Send checks every time");
    // The permission and the channel installed before relay until they expire.
    assert!(h.peer_packet(id, addr(PEER), b"installed before").0.is_some());
    let (outcome, packet) = alice.channel_data(&mut h, 0x4000, b"bound before");
    assert_forwarded(&outcome, &packet, id, addr(PEER_B), b"bound before");
    assert_success(&alice.refresh(&mut h, Some(3600)));
    h.advance(secs(600));
    h.timeout();
    assert_eq!(h.peer_packet(id, addr(PEER), b"expired").0, None);
    assert_eq!(alice.channel_data(&mut h, 0x4000, b"expired").0, ClientOutcome::Dropped);

    // Allowed again: new permissions are taken.
    replace(&mut h, reloaded(TurnConfig::default()));
    assert_success(&alice.permit(&mut h, &[addr(PEER)]));
}

#[test]
fn new_lifetimes_apply_to_the_next_allocate_and_refresh_and_not_to_what_was_granted() {
    let mut h = Harness::authenticated();
    let (mut alice, id) = allocated_alice(&mut h);
    let granted = h.server.table().get(id).expect("alive").expires;
    assert_eq!(granted, h.now.instant + secs(600));

    let lifetimes = TurnConfig { default_lifetime: secs(120), max_lifetime: secs(300), ..TurnConfig::default() };
    replace(&mut h, reloaded(lifetimes));
    assert_eq!(h.server.table().get(id).expect("alive").expires, granted, "kept as granted");
    let mut bob = Client::bob("198.51.100.2:40000");
    assert_eq!(bob.allocate(&mut h).lifetime(), Some(120));
    assert_eq!(alice.refresh(&mut h, None).lifetime(), Some(120));
    assert_eq!(alice.refresh(&mut h, Some(3600)).lifetime(), Some(300));
}

#[test]
fn a_new_max_bps_applies_to_new_allocations_and_existing_ones_keep_theirs() {
    let mut h = Harness::authenticated();
    let (mut alice, alice_id) = allocated_alice(&mut h);
    assert_success(&alice.bind(&mut h, 0x4000, addr(PEER)));

    replace(&mut h, reloaded(TurnConfig { max_bps: 1000, ..TurnConfig::default() }));
    let mut bob = Client::bob("198.51.100.2:40000");
    bob.allocated(&mut h);
    let bob_id = bob.id(&h);
    assert_success(&bob.bind(&mut h, 0x4000, addr(PEER)));
    assert!(matches!(bob.channel_data(&mut h, 0x4000, &[1; 1000]).0, ClientOutcome::Forward { .. }));
    assert_eq!(bob.channel_data(&mut h, 0x4000, &[1; 10]).0, ClientOutcome::Dropped, "over its second's worth");
    assert_eq!(h.peer_packet(bob_id, addr(PEER), &[2; 1100]).0, None);
    for _ in 0..3 {
        let (outcome, packet) = alice.channel_data(&mut h, 0x4000, &[1; 1000]);
        assert_forwarded(&outcome, &packet, alice_id, addr(PEER), &[1; 1000]);
    }
    assert_eq!(h.stats().over_bandwidth, 2, "bob's two, none of alice's");
}

#[test]
fn nonces_stay_valid_across_a_reload_and_the_new_users_apply_at_once() {
    let mut h = Harness::authenticated();
    let (mut alice, _) = allocated_alice(&mut h);
    let mut bob = Client::bob("198.51.100.2:40000");
    bob.allocated(&mut h);
    let errors = h.stats().error_responses;

    let mut config = reloaded(TurnConfig::default());
    config.turn.as_mut().expect("TURN").auth = Some(reloaded_authenticator(&USERS[..1]));
    replace(&mut h, config);
    // Alice signs with the nonce she was given before: no 401, no 438.
    assert_success(&alice.refresh(&mut h, None));
    assert_eq!(h.stats().error_responses, errors, "the nonce key is the one the server started with");
    assert_error(&bob.refresh(&mut h, None), 401);
}

#[test]
fn the_rate_limit_changes_and_each_source_keeps_what_it_spent() {
    let mut h = Harness::with_config(ServerConfig::default());
    let tuple = FiveTuple { client: addr("198.51.100.9:1234"), server: addr(SERVER), transport: Transport::Udp };
    for _ in 0..3 {
        assert!(binding_answered(&mut h, &tuple).is_some(), "the default allows a burst of 1000");
    }
    let strict = RateLimit { per_second: 1.0, burst: 4.0, ..RateLimit::default() };
    assert!(h.server.replace_config(ServerConfig { rate_limit: strict, ..ServerConfig::default() }));
    assert!(binding_answered(&mut h, &tuple).is_some(), "four tokens at most now");
    let answered = (0..10).filter(|_| binding_answered(&mut h, &tuple).is_some()).count();
    assert_eq!(answered, 3);
    let other = FiveTuple { client: addr("198.51.100.10:1234"), ..tuple };
    assert_eq!((0..10).filter(|_| binding_answered(&mut h, &other).is_some()).count(), 4, "a new source's burst");

    assert!(h.server.replace_config(ServerConfig::default()));
    assert!(binding_answered(&mut h, &tuple).is_none(), "nothing left, and no time to refill");
    h.advance(Duration::from_millis(10));
    assert_eq!((0..10).filter(|_| binding_answered(&mut h, &tuple).is_some()).count(), 5, "the default rate refills");
}

#[test]
fn software_reason_phrases_and_alternates_apply_to_the_next_answers() {
    let mut h = Harness::authenticated();
    h.set_limits(|l| l.total = 1);
    allocated_alice(&mut h);
    let mut bob = Client::bob("198.51.100.2:40000");
    let response = bob.allocate(&mut h);
    assert_error(&response, 508);
    assert_eq!(response.attr(AttrType::SOFTWARE), None);

    let alternate = addr("203.0.113.7:3478");
    let mut config = reloaded(TurnConfig { alternate_servers: vec![alternate], ..TurnConfig::default() });
    config.software = Some("tern reloaded".into());
    config.reason_phrases = true;
    replace(&mut h, config);
    let response = bob.allocate(&mut h);
    assert_error(&response, 300);
    let value = response.attr(AttrType::ALTERNATE_SERVER).expect("ALTERNATE-SERVER");
    assert_eq!(attr::read_address(value), Ok(alternate));
    assert_eq!(response.attr(AttrType::SOFTWARE), Some(&b"tern reloaded"[..]));
    let code = attr::read_error_code(response.attr(AttrType::ERROR_CODE).expect("ERROR-CODE")).expect("valid");
    assert!(!code.reason.is_empty(), "a reason phrase now");
}

#[test]
fn a_config_that_changes_the_mode_is_refused_and_changes_nothing() {
    let mut h = Harness::authenticated();
    let (mut alice, _) = allocated_alice(&mut h);
    let stun_only = ServerConfig { software: Some("stun only".into()), ..ServerConfig::default() };
    assert!(!h.server.replace_config(stun_only), "TURN cannot be turned off by a reload");
    let anonymous = ServerConfig {
        software: Some("anonymous".into()),
        turn: Some(TurnConfig::default()),
        ..ServerConfig::default()
    };
    assert!(!h.server.replace_config(anonymous), "nor authentication");
    let response = alice.refresh(&mut h, None);
    assert_success(&response);
    assert_eq!(response.attr(AttrType::SOFTWARE), None, "the running configuration still");

    let mut stun = Harness::with_config(ServerConfig::default());
    assert!(!stun.server.replace_config(reloaded(TurnConfig::default())), "nor can TURN be turned on");
}
