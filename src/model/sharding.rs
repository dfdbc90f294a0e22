//! A model's value tables sharded by columns over devices beside its own
//! (`Model::new_sharded`; `memory::ShardedValues`): the devices it holds and each table's
//! shards. The model's own device keeps everything else and the first columns.

use crate::error::Error;
use crate::kernels::Gpu;
use crate::memory::ShardedValues;
use crate::params::ParamId;

pub(crate) struct Sharding {
    /// The devices after the model's own, in shard order.
    pub others: Vec<Gpu>,
    /// Each value table's shards, by parameter id.
    pub tables: Vec<(ParamId, ShardedValues)>,
}

impl Sharding {
    /// Table `id`'s shards, if it is sharded.
    pub fn table(&self, id: ParamId) -> Option<&ShardedValues> {
        self.tables.iter().find(|(t, _)| *t == id).map(|(_, v)| v)
    }

    /// Every device in shard order: `main` (the model's own), then the others.
    pub fn devices<'a>(&'a self, main: &'a Gpu) -> Vec<&'a Gpu> {
        std::iter::once(main).chain(self.others.iter()).collect()
    }

    /// What refuses work that needs a whole table on one device.
    pub fn whole_table_needed(what: &str) -> Error {
        Error::Config(format!(
            "{what} needs the value table on one device: a model whose values are sharded over devices has its tables only in shards (train it with Trainer::new_sharded)"
        ))
    }
}
