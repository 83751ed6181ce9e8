//! The three presets a [`Config`] starts from, and how a deserialized
//! config fills what its source leaves out.
//!
//! # Design
//!
//! A preset is a complete [`Config`]: each section type builds its part with
//! `preset(Preset) -> Self`, so the values live next to the field docs and
//! `Config::recommended` / `aggressive` / `local` only assemble them.
//!
//! Every section derives `Deserialize` with `#[serde(default = ...)]`, so a
//! missing field takes the preset's value. serde's derive passes no context
//! to that default, and a file names its preset beside the sections it
//! shapes, so [`Preset::load`] sets the preset for the duration of one
//! deserialization on the calling thread ([`Preset::loading`] reads it);
//! anywhere else missing fields take [`Preset::Recommended`]'s values.

use std::cell::Cell;

use super::Config;

/// Which preset a config starts from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// Conservative settings for validators on the public internet
    /// ([`Config::recommended`]).
    #[default]
    Recommended,
    /// Faster dialing, gossip and pinging for well-connected networks
    /// ([`Config::aggressive`]).
    Aggressive,
    /// Loopback clusters, tests and benchmarks: quick dials, short backoffs,
    /// private addresses, no per-address admission limits ([`Config::local`]).
    Local,
}

thread_local! {
    static LOADING: Cell<Preset> = const { Cell::new(Preset::Recommended) };
}

/// Puts the previous preset back when a [`Preset::load`] ends, even by a
/// panic.
struct Restore(Preset);

impl Drop for Restore {
    fn drop(&mut self) {
        LOADING.with(|l| l.set(self.0));
    }
}

impl Preset {
    /// Runs `load` (a deserialization of a [`Config`] or of a type holding
    /// its sections) with this preset's values as the defaults of every
    /// field the source leaves out.
    pub fn load<T>(self, load: impl FnOnce() -> T) -> T {
        let _restore = Restore(LOADING.with(|l| l.replace(self)));
        load()
    }

    /// The preset whose values missing fields take: the one given to the
    /// [`Preset::load`] running on this thread, otherwise
    /// [`Preset::Recommended`].
    pub fn loading() -> Preset {
        LOADING.with(Cell::get)
    }

    /// The whole config of this preset (a fresh random identity, `listen`
    /// as given).
    pub fn config(self, listen: Option<std::net::SocketAddr>) -> Config {
        Config::preset(self, listen)
    }
}

/// A config section: its values under each preset.
pub(crate) trait Section: Sized {
    fn preset(preset: Preset) -> Self;
}

/// serde's default for a section: its values under [`Preset::loading`].
pub(crate) fn loading<T: Section>() -> T {
    T::preset(Preset::loading())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_sets_the_preset_for_its_closure_only() {
        assert_eq!(Preset::loading(), Preset::Recommended);
        let inner = Preset::Local.load(|| {
            let nested = Preset::Aggressive.load(Preset::loading);
            (Preset::loading(), nested)
        });
        assert_eq!(inner, (Preset::Local, Preset::Aggressive));
        assert_eq!(Preset::loading(), Preset::Recommended);
        let panicked = std::panic::catch_unwind(|| Preset::Local.load(|| panic!("in a load")));
        assert!(panicked.is_err());
        assert_eq!(Preset::loading(), Preset::Recommended);
    }
}
