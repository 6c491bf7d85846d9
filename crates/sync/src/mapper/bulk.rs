//! The bulk build of the initial copy: copied rows straight into node columns and a CSR.

#[allow(unused_imports)]
use super::*;

/// How one table's copied rows map, taken from the [`Mapper`] once so that rows can be mapped
/// without it (on the copy's loading thread).
#[derive(Debug, Clone)]
pub struct BulkPlan(Arc<RelPlan>);

impl Mapper {
    /// The plan for copied rows of `rel`, or `None` if the mapping does not read it.
    pub fn bulk_plan(&mut self, rel: &Arc<Relation>) -> Result<Option<BulkPlan>, MapError> {
        Ok(self.plan(rel)?.map(BulkPlan))
    }
}

/// Builds the first graph from copied rows (the initial copy): node ids are handed out as rows
/// and endpoints appear, edges go straight into the CSR.
#[derive(Debug)]
pub struct BulkLoad {
    /// Every node's id by label and key.
    ids: IdTable,
    nodes: Vec<Option<NodeData>>,
    visible: Vec<bool>,
    edges: Vec<EdgeInput>,
    weighted: bool,
    index: RowIndex,
    rows: u64,
}

pub(super) struct BulkIds<'a> {
    ids: &'a mut IdTable,
    nodes: &'a mut Vec<Option<NodeData>>,
    visible: &'a mut Vec<bool>,
}

impl Nodes for BulkIds<'_> {
    fn id(&mut self, label: NodeLabel, key: &NodeKey) -> NodeId {
        if let Some(id) = self.ids.get(label, key) {
            return NodeId(id);
        }
        // At u32::MAX nodes the build is refused (`BulkError::TooManyNodes`) at its end.
        let id = self.nodes.len() as u32;
        debug_assert!(id != u32::MAX, "the id table's free-slot marker");
        self.nodes.push(Some(NodeData::bare(label, key.clone())));
        self.visible.push(false);
        self.ids.insert(label, key, id);
        NodeId(id)
    }
}

impl BulkLoad {
    /// An empty build for `mapper`'s mapping, filling `index` (from [`Mapper::index_for`] or
    /// [`Mapper::new_index`]).
    pub fn new(index: RowIndex) -> Self {
        BulkLoad {
            ids: IdTable::default(),
            nodes: Vec::new(),
            visible: Vec::new(),
            edges: Vec::new(),
            weighted: false,
            index,
            rows: 0,
        }
    }

    /// Rows added so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Adds one copied row of `rel`.
    pub fn insert(&mut self, mapper: &mut Mapper, rel: &Arc<Relation>, values: &[Value]) -> Result<(), MapError> {
        match mapper.bulk_plan(rel)? {
            Some(plan) => self.insert_planned(&plan, values),
            None => Ok(()),
        }
    }

    /// Adds one copied row of the table `plan` is for (its columns in `values`).
    pub fn insert_planned(&mut self, plan: &BulkPlan, values: &[Value]) -> Result<(), MapError> {
        let plan: &RelPlan = &plan.0;
        self.rows += 1;
        let mut ids = BulkIds {
            ids: &mut self.ids,
            nodes: &mut self.nodes,
            visible: &mut self.visible,
        };
        // The row's identity only where it is kept: a node's key, or an edge found by row.
        let needed = plan.node.is_some() || plan.edges.iter().any(|ep| self.index.keeps_rows(ep.mapping));
        let rk = needed.then(|| row_key(plan, values)).transpose()?;
        if let (Some(np), Some(rk)) = (&plan.node, &rk) {
            let id = ids.id(np.label, rk);
            self.nodes[id.index()] = Some(node_data(plan, np, rk.clone(), values, None)?);
            self.visible[id.index()] = true;
        }
        if !plan.edges.is_empty() {
            for ep in &plan.edges {
                let mut ids = BulkIds {
                    ids: &mut self.ids,
                    nodes: &mut self.nodes,
                    visible: &mut self.visible,
                };
                if let Some(e) = edge_of(plan, ep, values, None, &mut ids)? {
                    self.weighted |= e.weight != 1.0;
                    self.edges.push(e);
                    if let Some(rk) = &rk {
                        self.index.record(ep.mapping, rk, e);
                    }
                }
            }
        }
        Ok(())
    }

    /// Starts loading the id table's slots that adding this row of `plan`'s table will read
    /// (its node's and its edges' endpoints' keys, integer ones), for a row a few ahead of
    /// the one being added.
    pub fn prefetch_planned(&self, plan: &BulkPlan, values: &[Value]) {
        let plan: &RelPlan = &plan.0;
        let own = plan.node.iter().map(|np| (np.label, &np.key[..]));
        let ends = plan.edges.iter().flat_map(|ep| [&ep.source, &ep.target]);
        for (label, cols) in own.chain(ends.map(|(l, c)| (*l, &c[..]))) {
            if let Some(key) = int_key(cols, values) {
                self.ids.prefetch(label, key);
            }
        }
    }

    /// The graph at `lsn` and its row index.
    pub fn finish(self, lsn: u64, policy: CompactionPolicy) -> Result<(Graph, RowIndex), MapError> {
        let mut hidden = vec![0u64; self.visible.len().div_ceil(64)];
        for (i, v) in self.visible.iter().enumerate() {
            if !v {
                hidden[i >> 6] |= 1 << (i & 63);
            }
        }
        let g = Graph::bulk_with_hidden(self.nodes, hidden, &self.edges, self.weighted, lsn, policy)?;
        Ok((g, self.index))
    }
}
