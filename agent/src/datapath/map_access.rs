//! Opening the programs' maps by name, with errors that name the map: the
//! loaded object's maps (borrowed from `Ebpf`) and pinned ones (owned, for
//! readers on other threads).

use std::path::Path;

use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, Map, MapData, MapError},
};

use super::{DatapathError, Result};

pub(super) fn map_err(map: &'static str) -> impl FnOnce(MapError) -> DatapathError {
    move |source| DatapathError::Map { map, source }
}

/// A map of the loaded object.
pub(super) fn loaded<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Map> {
    ebpf.map_mut(name)
        .ok_or(DatapathError::MissingMap { map: name })
}

pub(super) fn array<'a, V: aya::Pod>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<Array<&'a mut MapData, V>> {
    Array::try_from(loaded(ebpf, name)?).map_err(map_err(name))
}

pub(super) fn hash<'a, K: aya::Pod, V: aya::Pod>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<HashMap<&'a mut MapData, K, V>> {
    HashMap::try_from(loaded(ebpf, name)?).map_err(map_err(name))
}

pub(super) fn trie<'a, K: aya::Pod, V: aya::Pod>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<LpmTrie<&'a mut MapData, K, V>> {
    LpmTrie::try_from(loaded(ebpf, name)?).map_err(map_err(name))
}

/// A map pinned under `pin_dir`, as the typed map `T`.
pub(super) fn pinned<T: TryFrom<Map, Error = MapError>>(
    pin_dir: &Path,
    name: &'static str,
) -> Result<T> {
    let data = MapData::from_pin(pin_dir.join(name)).map_err(map_err(name))?;
    let map = Map::from_map_data(data).map_err(map_err(name))?;
    T::try_from(map).map_err(map_err(name))
}
