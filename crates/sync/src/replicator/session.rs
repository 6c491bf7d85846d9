//! One connection's session: connect, check the catalog and publication, decide how to
//! resume (restored checkpoint, refusal, or a rebuild with an initial copy), then stream.

#[allow(unused_imports)]
use super::*;

/// One session of the run `r`: returns when shutdown was asked (after the final checkpoint),
/// when a reload arrived, or with the error that ended it (transient ones reconnect).
pub(super) async fn session(r: &mut Replicator) -> Result<SessionEnd, SyncError> {
    let Replicator {
        opts,
        reloads,
        store,
        log,
        mapper,
        status,
        shutdown,
        state,
        rebuild,
        restoring,
        rebuilding,
        rebuild_after_restore,
        nested,
        root,
        base_slot,
        generation,
        tables: tables_in_force,
        base,
        ..
    } = r;
    let (opts, store, log, status, shutdown) = (&*opts, &*store, &*log, &*status, &*shutdown);
    let hash = opts.hash();
    let mut client = ReplicationClient::connect(&opts.conn).await?;
    let sys = client.identify_system().await?;
    tracing::info!(target = %opts.conn.target(), system_id = %sys.system_id, wal = %sys.xlog_pos, "connected");
    let server_version = client.parameter("server_version").map(str::to_string);
    status.update(|s| s.server_version = server_version);
    // A mapping that does not fit the tables any more: with a data directory to serve, it is
    // restored and served while replication pauses (the run sees the error once it is).
    let (tables, broken) = match catalog::check_tables(&mut client, &opts.config).await {
        Ok(t) => (t, None),
        Err(e) => {
            let e = SyncError::from(e);
            if e.is_mapping_broken() && state.is_none() && !*rebuild && !*nested {
                (Vec::new(), Some(e))
            } else {
                return Err(e);
            }
        }
    };
    if broken.is_none() {
        catalog::ensure_publication(&mut client, &opts.publication, &tables).await?;
        *tables_in_force = tables.clone();
        if let Err(e) = mapper.know_table_oids(tables.iter().map(|t| (t.oid, t.qualified.clone()))) {
            if state.is_some() {
                return Err(e.into());
            }
        }
    }
    let view = state.as_ref().map(|st| st.graph.view());
    status.set_schema(schema(opts, mapper, &tables, view.as_deref(), hash));
    let slot = catalog::slot_state(&mut client, &opts.slot).await?;
    if opts.yield_slot {
        // Another leader says more than what this replica lacks.
        if let Some(s) = &slot {
            if let Some(pid) = s.active_pid {
                return Err(SyncError::SlotInUse {
                    slot: opts.slot.clone(),
                    pid,
                });
            }
            if let Some(st) = state.as_ref().filter(|st| s.confirmed_flush > st.safe) {
                return Err(taken_over(opts, s.confirmed_flush, st.safe));
            }
        }
    }
    if !*nested && rebuilding.is_none() {
        super::rebuild::cleanup_leftovers(&mut client, root, base_slot, generation, opts.yield_slot).await;
    }

    if state.is_none() {
        let restored = if *rebuild {
            None
        } else {
            match restoring.take() {
                Some(task) => task
                    .await
                    .map_err(|e| SyncError::Io(format!("restoring failed: {e}")))??,
                None => super::restore::restore(store, log, hash)?,
            }
        };
        match restored {
            Some(resumed) => {
                let position = resumed.position();
                let super::restore::Resumed {
                    restored: r,
                    replayed,
                    cut,
                    took,
                    loading,
                } = resumed;
                for refused in &r.refused {
                    tracing::warn!(%refused, "skipped an unusable snapshot");
                }
                let Some(s) = &slot else {
                    return Err(SyncError::SlotMissing {
                        slot: opts.slot.clone(),
                        lsn: position,
                    });
                };
                if s.wal_status.as_deref() == Some("lost") {
                    return Err(SyncError::SlotInvalidated {
                        slot: opts.slot.clone(),
                    });
                }
                if let Some(cut) = cut.filter(|_| s.confirmed_flush > position) {
                    return Err(SyncError::LogDamaged {
                        file: cut.file,
                        offset: cut.offset,
                        confirmed: s.confirmed_flush,
                        position,
                    });
                }
                if s.confirmed_flush > position && opts.yield_slot {
                    return Err(taken_over(opts, s.confirmed_flush, position));
                }
                if s.confirmed_flush > position {
                    return Err(SyncError::Gap {
                        slot: opts.slot.clone(),
                        confirmed: s.confirmed_flush,
                        restored: position,
                    });
                }
                tracing::info!(
                    snapshot = %r.manifest.snapshot,
                    snapshot_lsn = %r.lsn,
                    replayed_records = replayed.records,
                    replayed_txns = replayed.txns,
                    replayed_changes = replayed.mutations,
                    position = %position,
                    nodes = r.graph.view().node_count(),
                    edges = r.graph.view().edge_count(),
                    ms = took.as_millis() as u64,
                    snapshot_ms = loading.as_millis() as u64,
                    "restored"
                );
                let mut r = r;
                r.graph.set_policy(opts.compaction);
                // Key kinds as the graph holds them; type changes made while stopped show.
                mapper.seed_key_classes(&r.graph.view());
                let names = schema(opts, mapper, &tables, Some(&r.graph.view()), hash);
                let writer = LogWriter::open(log, position, writer_options(opts))?;
                let feed = open_feed(opts, hash, status, position)?;
                status.set_served(r.graph.reader(), Arc::new(names));
                status.update(|st| {
                    st.applied_lsn = position;
                    st.durable_lsn = position;
                    st.snapshot_lsn = r.manifest.lsn;
                    st.replayed_changes = replayed.mutations;
                });
                *state = Some(State {
                    graph: r.graph,
                    index: r.index,
                    safe: position,
                    manifest: r.manifest,
                    log: writer,
                    feed,
                    logged: position,
                    since_snapshot: replayed.mutations,
                    bg: Background::default(),
                    log_pin: Default::default(),
                });
                if let Some(e) = broken {
                    return Err(e);
                }
                if *rebuild_after_restore {
                    return Ok(SessionEnd::Restored);
                }
            }
            None => {
                if let Some(e) = broken {
                    return Err(e);
                }
                if let Some(s) = &slot {
                    // Another process streaming from it says more than our missing state.
                    if let Some(pid) = s.active_pid {
                        return Err(SyncError::SlotInUse {
                            slot: opts.slot.clone(),
                            pid,
                        });
                    }
                    let ours = store.dir().join("initial-copy.started").exists();
                    if !*rebuild && !ours {
                        return Err(SyncError::SlotWithoutState {
                            slot: opts.slot.clone(),
                            dir: store.dir().to_path_buf(),
                        });
                    }
                    tracing::warn!(slot = %opts.slot, "dropping the replication slot to rebuild from the source tables");
                    client.drop_slot(&opts.slot, false).await?;
                }
                store.clear()?;
                log.clear()?;
                status.update(|s| s.phase = Phase::InitialCopy);
                let (graph, index, lsn) = match base.take() {
                    Some(b) => {
                        let n = b.reshape.copied_tables() as u64;
                        let done =
                            super::initial_copy::table_copy(opts, &mut client, &tables, mapper, store, status, b)
                                .await?;
                        status.update(|s| s.copies += n);
                        done
                    }
                    None => {
                        let done = super::initial_copy::initial_copy(opts, &mut client, &tables, mapper, store, status)
                            .await?;
                        status.update(|s| s.copies += tables.len() as u64);
                        done
                    }
                };
                status.set_graph(graph.reader());
                // The copied graph is durable once its first snapshot is written; the log
                // starts after it.
                let manifest = crate::blocking(|| first_snapshot(store, &graph, &index, hash, status))?;
                let writer = LogWriter::open(log, lsn, writer_options(opts))?;
                let feed = open_feed(opts, hash, status, lsn)?;
                let _ = std::fs::remove_file(store.dir().join("initial-copy.started"));
                status.update(|s| {
                    s.applied_lsn = lsn;
                    s.durable_lsn = lsn;
                });
                *state = Some(State {
                    graph,
                    index,
                    safe: lsn,
                    manifest,
                    log: writer,
                    feed,
                    logged: lsn,
                    since_snapshot: 0,
                    bg: Background::default(),
                    log_pin: Default::default(),
                });
                *rebuild = false;
            }
        }
    } else if let Some(st) = state.as_ref() {
        match &slot {
            None => {
                return Err(SyncError::SlotMissing {
                    slot: opts.slot.clone(),
                    lsn: st.safe,
                })
            }
            Some(s) if s.wal_status.as_deref() == Some("lost") => {
                return Err(SyncError::SlotInvalidated {
                    slot: opts.slot.clone(),
                })
            }
            Some(s) if s.confirmed_flush > st.safe => {
                return Err(SyncError::Gap {
                    slot: opts.slot.clone(),
                    confirmed: s.confirmed_flush,
                    restored: st.safe,
                })
            }
            _ => {}
        }
    }
    let st = state.as_mut().ok_or_else(|| SyncError::Io("no replica state".into()))?;
    if let Some(s) = &slot {
        if let Some(pid) = s.active_pid {
            return Err(SyncError::SlotInUse {
                slot: opts.slot.clone(),
                pid,
            });
        }
    }
    let ctx = StreamCtx {
        opts,
        store,
        status,
        shutdown,
        reloads,
        rebuild: rebuilding.as_ref().map(|rb| rb.status.clone()),
        watch_tables: if *nested {
            Vec::new()
        } else {
            tables_in_force
                .iter()
                .map(|t| (t.oid, t.qualified.clone(), t.partitioned))
                .collect()
        },
    };
    let r = super::stream::stream(ctx, mapper, st, client).await;
    // Streaming ended (shutdown, a reconnect, the slot lost): the slot is not held now.
    status.note_slot_released();
    r
}

/// Label names and key kinds: each label's key kinds as the graph holds them (a node of it in
/// `view`), else as the catalog's `tables` say.
pub(super) fn schema(
    opts: &Options,
    mapper: &Mapper,
    tables: &[TableInfo],
    view: Option<&graph::GraphView>,
    hash: u64,
) -> GraphSchema {
    fn kinds(k: &graph::NodeKey, out: &mut Vec<KeyKind>) {
        match k {
            graph::NodeKey::Int(_) => out.push(KeyKind::Int),
            graph::NodeKey::Uuid(_) => out.push(KeyKind::Uuid),
            graph::NodeKey::Text(_) => out.push(KeyKind::Text),
            graph::NodeKey::Composite(p) => p.iter().for_each(|p| kinds(p, out)),
        }
    }
    let labels = opts.config.nodes.len();
    let mut held: Vec<Option<Vec<KeyKind>>> = match view {
        Some(v) => crate::mapper::first_keys(v, labels)
            .iter()
            .map(|k| {
                k.as_ref().map(|k| {
                    let mut out = Vec::new();
                    kinds(k, &mut out);
                    out
                })
            })
            .collect(),
        None => vec![None; labels],
    };
    GraphSchema {
        node_labels: mapper.node_labels().to_vec(),
        edge_labels: mapper.edge_labels().to_vec(),
        filter_names: mapper.filter_names().to_vec(),
        key_kinds: opts
            .config
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                if let Some(k) = held[i].take().filter(|k| k.len() == n.key.names().len()) {
                    return k;
                }
                let t = tables.iter().find(|t| t.qualified == n.table);
                n.key
                    .names()
                    .iter()
                    .map(|c| match t.and_then(|t| t.attribute(c)).map(|x| x.1) {
                        Some(20 | 21 | 23) => KeyKind::Int,
                        Some(2950) => KeyKind::Uuid,
                        _ => KeyKind::Text,
                    })
                    .collect()
            })
            .collect(),
        slot: opts.slot.clone(),
        publication: opts.publication.clone(),
        mapping_hash: hash,
    }
}

/// How the change log is written.
pub(super) fn writer_options(opts: &Options) -> WriterOptions {
    WriterOptions {
        segment_bytes: opts.log_segment_bytes,
        sync_interval: opts.log_sync_interval,
        ..WriterOptions::new(opts.hash())
    }
}

/// The change feed of the log in `opts.data_dir`, following from `position`, made visible to
/// the API.
pub(super) fn open_feed(
    opts: &Options,
    hash: u64,
    status: &ReplicaStatus,
    position: Lsn,
) -> Result<Arc<crate::feed::Feed>, SyncError> {
    let schema = status.schema().unwrap_or_default();
    let feed = Arc::new(crate::feed::Feed::new(
        &opts.data_dir.join("log"),
        hash,
        schema,
        position,
        opts.feed_memory_bytes,
    )?);
    status.set_feed(feed.clone());
    // Wakes the subscribers of the scopes each applied batch changed.
    let (dispatcher, mut applied) = (Arc::downgrade(&feed), status.subscribe_applied());
    tokio::spawn(async move {
        while applied.changed().await.is_ok() {
            let upto = *applied.borrow_and_update();
            let Some(feed) = dispatcher.upgrade() else { return };
            feed.dispatch(upto);
        }
    });
    Ok(feed)
}

/// The slot was advanced past `ours` by another process (standing by is possible).
fn taken_over(opts: &Options, confirmed: Lsn, ours: Lsn) -> SyncError {
    SyncError::SlotTakenOver {
        slot: opts.slot.clone(),
        confirmed,
        ours,
    }
}
