//! libunftp's login hooks over [`LoginService`]: per-user protocols, allowed addresses, bans and
//! the fail2ban log line all come from there, so FTP refuses exactly as SFTP does.
//!
//! libunftp splits a login in two: an [`Authenticator`] checks the password and names a
//! principal, then a [`UserDetailProvider`] turns the principal into the session's user. The
//! session that [`LoginService`] opened is handed from one to the other through a slot owned by
//! the connection (each connection gets its own pair, built with its client's real address).

use super::link::ControlLink;
use crate::auth::{LoginError, LoginService, Protocol, Session};
use async_trait::async_trait;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use unftp_core::auth::{
    AuthenticationError, Authenticator, Credentials, Principal, UserDetail, UserDetailError,
    UserDetailProvider,
};

/// The libunftp user type: a logged-in session with its file tree.
pub(crate) struct FtpUser {
    pub(crate) session: Session,
    /// The state of the session's control connection, which an upload checks before it
    /// commits.
    pub(crate) link: Arc<ControlLink>,
}

impl fmt::Display for FtpUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.session.account.username)
    }
}

impl fmt::Debug for FtpUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FtpUser({:?})", self.session.account.username)
    }
}

impl UserDetail for FtpUser {}

/// Where the authenticator leaves the session for the user provider.
pub(crate) type SessionSlot = Arc<Mutex<Option<Session>>>;

/// Checks passwords for one connection.
pub(crate) struct FtpAuthenticator {
    login: Arc<LoginService>,
    /// The client's real address: libunftp's `Credentials::source_ip` is the relay's loopback.
    ip: IpAddr,
    slot: SessionSlot,
    /// The relay's copy, for the checks it makes before forwarding a transfer command.
    relay_slot: SessionSlot,
}

impl FtpAuthenticator {
    pub(crate) fn new(
        login: Arc<LoginService>,
        ip: IpAddr,
        slot: SessionSlot,
        relay_slot: SessionSlot,
    ) -> Self {
        FtpAuthenticator {
            login,
            ip,
            slot,
            relay_slot,
        }
    }
}

impl fmt::Debug for FtpAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FtpAuthenticator({})", self.ip)
    }
}

#[async_trait]
impl Authenticator for FtpAuthenticator {
    async fn authenticate(
        &self,
        username: &str,
        creds: &Credentials,
    ) -> Result<Principal, AuthenticationError> {
        let password = creds.password.as_deref().unwrap_or("");
        match self
            .login
            .login_password(Protocol::Ftp, self.ip, username, password)
            .await
        {
            Ok(session) => {
                *self.relay_slot.lock().expect("lock") = Some(session.clone());
                *self.slot.lock().expect("lock") = Some(session);
                Ok(Principal {
                    username: username.to_string(),
                })
            }
            // LoginService has logged the reason and scored it; the client only learns "530".
            Err(LoginError::UnknownUser) => Err(AuthenticationError::BadUser),
            Err(_) => Err(AuthenticationError::BadPassword),
        }
    }
}

/// Hands the session that [`FtpAuthenticator`] opened to libunftp as the user.
pub(crate) struct FtpUserProvider {
    slot: SessionSlot,
    link: Arc<ControlLink>,
}

impl fmt::Debug for FtpUserProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FtpUserProvider")
    }
}

impl FtpUserProvider {
    pub(crate) fn new(slot: SessionSlot, link: Arc<ControlLink>) -> Self {
        FtpUserProvider { slot, link }
    }
}

#[async_trait]
impl UserDetailProvider for FtpUserProvider {
    type User = FtpUser;

    async fn provide_user_detail(&self, principal: &Principal) -> Result<FtpUser, UserDetailError> {
        let session = self.slot.lock().expect("lock").take();
        match session {
            Some(s) if s.account.username == principal.username => Ok(FtpUser {
                session: s,
                link: self.link.clone(),
            }),
            _ => Err(UserDetailError::UserNotFound {
                username: principal.username.clone(),
            }),
        }
    }
}
