//! A local emulator of the Didit API.
