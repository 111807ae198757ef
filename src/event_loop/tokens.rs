//! The token table: which source (listener, client connection, link pipe or socket, JWKS
//! fetch, the signal socket) each `mio` token stands for, and the registrars through which
//! links and fetches watch their sources under tokens that route back to them.

use crate::idmap::IdMap;
use crate::upstream::link::LinkRegistry;
use crate::upstream::{LinkId, Registrar};
use mio::event::Source;
use mio::{Interest, Registry, Token};
use std::io;

/// Who owns a token.
#[derive(Debug, Clone, Copy)]
pub enum Owner {
    Listener(usize),
    Conn,
    /// A socket or pipe of a link.
    Link(LinkId),
    /// A JWKS fetch's socket.
    Fetch,
    Signal,
}

/// The token table. Tokens are never reused, so a late event for a closed source finds no
/// owner and is dropped.
pub struct Tokens {
    pub owners: IdMap<Token, Owner>,
    pub next: usize,
}

impl Tokens {
    pub fn add(&mut self, owner: Owner) -> Token {
        let t = Token(self.next);
        self.next += 1;
        self.owners.insert(t, owner);
        t
    }
}

/// Lends the loop's registry and token table to the links (`LinkRegistry`) and to the JWKS
/// fetcher (`Registrar`): a source registered through it gets a fresh token owned by them.
pub struct Reg<'a> {
    pub registry: &'a Registry,
    pub tokens: &'a mut Tokens,
}

impl Reg<'_> {
    fn watch(
        &mut self,
        owner: Owner,
        src: &mut dyn Source,
        interest: Interest,
    ) -> io::Result<Token> {
        let token = self.tokens.add(owner);
        if let Err(e) = self.registry.register(src, token, interest) {
            self.tokens.owners.remove(&token);
            return Err(e);
        }
        Ok(token)
    }

    fn unwatch(&mut self, src: &mut dyn Source, token: Token) {
        let _ = self.registry.deregister(src);
        self.tokens.owners.remove(&token);
    }
}

impl LinkRegistry for Reg<'_> {
    fn register(
        &mut self,
        link: LinkId,
        src: &mut dyn Source,
        interest: Interest,
    ) -> io::Result<Token> {
        self.watch(Owner::Link(link), src, interest)
    }

    fn reregister(&mut self, src: &mut dyn Source, token: Token, i: Interest) -> io::Result<()> {
        self.registry.reregister(src, token, i)
    }

    fn deregister(&mut self, src: &mut dyn Source, token: Token) {
        self.unwatch(src, token)
    }
}

impl Registrar for Reg<'_> {
    fn register(&mut self, src: &mut dyn Source, interest: Interest) -> io::Result<Token> {
        self.watch(Owner::Fetch, src, interest)
    }

    fn reregister(&mut self, src: &mut dyn Source, token: Token, i: Interest) -> io::Result<()> {
        self.registry.reregister(src, token, i)
    }

    fn deregister(&mut self, src: &mut dyn Source, token: Token) {
        self.unwatch(src, token)
    }
}
