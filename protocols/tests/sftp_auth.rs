//! Logins over SSH: password, public key, keyboard-interactive, and the refusals.

use crate::sftp_common;

use russh::client::KeyboardInteractiveAuthResponse;
use russh::keys::PrivateKeyWithHashAlg;
use sftp_common::{Harness, ALICE_PW, OTHER_PW};
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_and_key_logins() {
    let h = Harness::start().await;
    h.sftp_password("alice", ALICE_PW).await.unwrap();
    h.sftp_alice_key().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_unknown_user_and_wrong_key_are_refused() {
    let h = Harness::start().await;
    let mut c = h.connect().await;
    assert!(!c
        .authenticate_password("alice", "nope")
        .await
        .unwrap()
        .success());
    assert!(!c
        .authenticate_password("nobody", "nope")
        .await
        .unwrap()
        .success());
    let other = sftp_common::new_key();
    let key = PrivateKeyWithHashAlg::new(Arc::new(other), None);
    assert!(!c
        .authenticate_publickey("alice", key)
        .await
        .unwrap()
        .success());
    // alice's key is not alice2's.
    let key = PrivateKeyWithHashAlg::new(Arc::new(h.alice_key.clone()), None);
    assert!(!c
        .authenticate_publickey("alice2", key)
        .await
        .unwrap()
        .success());
    // Still the same connection: the right password now works.
    assert!(c
        .authenticate_password("alice", ALICE_PW)
        .await
        .unwrap()
        .success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_not_allowed_is_refused() {
    let h = Harness::start().await;
    let mut c = h.connect().await;
    assert!(!c
        .authenticate_password("bob", OTHER_PW)
        .await
        .unwrap()
        .success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyboard_interactive_asks_one_password() {
    let h = Harness::start().await;
    let mut c = h.connect().await;
    let r = c
        .authenticate_keyboard_interactive_start("alice", None::<String>)
        .await
        .unwrap();
    let KeyboardInteractiveAuthResponse::InfoRequest { prompts, .. } = r else {
        panic!("expected a prompt, got {r:?}");
    };
    assert_eq!(prompts.len(), 1);
    let r = c
        .authenticate_keyboard_interactive_respond(vec![ALICE_PW.to_string()])
        .await
        .unwrap();
    assert!(
        matches!(r, KeyboardInteractiveAuthResponse::Success),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_sftp_and_scp_run() {
    let h = Harness::start().await;
    let c = h.alice_logged_in().await;
    let ch = c.channel_open_session().await.unwrap();
    ch.request_subsystem(true, "netconf").await.unwrap();
    let mut ch = ch;
    // The refusal arrives as a Failure message on the channel.
    let mut refused = false;
    while let Some(msg) = ch.wait().await {
        if matches!(msg, russh::ChannelMsg::Failure) {
            refused = true;
            break;
        }
    }
    assert!(refused);
    let mut ch2 = c.channel_open_session().await.unwrap();
    ch2.exec(true, "cat /etc/passwd").await.unwrap();
    let mut refused = false;
    while let Some(msg) = ch2.wait().await {
        if matches!(msg, russh::ChannelMsg::Failure) {
            refused = true;
            break;
        }
    }
    assert!(refused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_grace_closes_unauthenticated_connections() {
    let h = Harness::start_with(|o| o.login_grace = std::time::Duration::from_millis(300)).await;
    let c = h.connect().await;
    // The server hangs up on its own; no login is attempted.
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while !c.is_closed() {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("connection not closed after the login grace time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_key_is_created_once_with_mode_0600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("state/ssh_host_ed25519_key");
    let k1 = bucketgate_protocols::ssh::load_or_create_host_keys(std::slice::from_ref(&p)).unwrap();
    let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let k2 = bucketgate_protocols::ssh::load_or_create_host_keys(std::slice::from_ref(&p)).unwrap();
    assert_eq!(k1[0].public_key(), k2[0].public_key());
    // A listed key that is not the ed25519 one is never invented.
    let missing = dir.path().join("ssh_host_rsa_key");
    assert!(bucketgate_protocols::ssh::load_or_create_host_keys(&[p, missing]).is_err());
}

/// Twelve clients log in with a password at once; the harness allows two hash checks at a time
/// (`LoginService::new(.., 2)`), so no more than two argon2 checks (19 MiB and a core each) ever
/// run together, and every login still succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn password_hash_checks_are_capped() {
    let h = Harness::start().await;
    let logins = (0..12).map(|_| h.sftp_password("alice", ALICE_PW));
    for r in futures::future::join_all(logins).await {
        r.unwrap();
    }
    let peak = h.login.peak_concurrent_hash_checks();
    assert!(peak >= 1, "no hash check was counted");
    assert!(peak <= 2, "{peak} hash checks ran at once, the cap is 2");
}

/// The web console's admin passwords (`LoginService::admin_password`) go through the same
/// checker as SSH passwords: twelve at once never run more than the harness's two argon2
/// checks together, and wrong ones score on the same ban list, which then refuses the
/// address's SFTP logins too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_passwords_share_the_hash_cap_and_the_ban() {
    use bucketgate_protocols::auth::{hash_password, LoginError, Protocol};
    let h = Harness::start().await;
    let hash = hash_password("console-Pw");
    let ip: std::net::IpAddr = "192.0.2.9".parse().unwrap();
    let checks = (0..12).map(|_| h.login.admin_password(ip, "ops", Some(&hash), "console-Pw"));
    for r in futures::future::join_all(checks).await {
        r.unwrap();
    }
    let peak = h.login.peak_concurrent_hash_checks();
    assert!(
        (1..=2).contains(&peak),
        "{peak} hash checks ran at once, the cap is 2"
    );
    // The default threshold is 15: seven unknown accounts score 2 each, a wrong password 1.
    for _ in 0..7 {
        let r = h.login.admin_password(ip, "nobody", None, "guess").await;
        assert_eq!(r, Err(LoginError::UnknownUser));
    }
    assert!(!h.login.is_banned(ip));
    let r = h
        .login
        .admin_password(ip, "ops", Some(&hash), "wrong")
        .await;
    assert_eq!(r, Err(LoginError::WrongPassword));
    assert!(h.login.is_banned(ip));
    let r = h
        .login
        .admin_password(ip, "ops", Some(&hash), "console-Pw")
        .await;
    assert_eq!(
        r,
        Err(LoginError::Banned),
        "the right password from a banned address"
    );
    let sftp = h
        .login
        .login_password(Protocol::Sftp, ip, "alice", ALICE_PW)
        .await;
    assert!(matches!(sftp, Err(LoginError::Banned)));
}
