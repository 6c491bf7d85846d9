//! The social schema, its mapping, a random workload that always runs without errors, and the
//! graph SQL says the mapping should produce.
#![allow(dead_code)]

use super::replica::Expected;
use pgtest::Cluster;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

pub const SCHEMA: &str = "
CREATE TABLE users (id bigint PRIMARY KEY, org_id int, name text, bio text);
ALTER TABLE users ALTER COLUMN bio SET STORAGE EXTERNAL;
CREATE TABLE follows (follower_id bigint, followee_id bigint, weight float8, PRIMARY KEY (follower_id, followee_id));
CREATE TABLE posts (id bigint PRIMARY KEY, author_id bigint, title text);
CREATE TABLE audit (id bigserial PRIMARY KEY, note text);
";

/// Writes the mapping for `db` (slot and publication named after it) and returns its path.
pub fn write_config(dir: &Path, db: &str) -> PathBuf {
    let path = dir.join(format!("{db}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"
[source]
slot = "gs_{db}"
publication = "gs_{db}"

[[nodes]]
table = "public.users"
key = "id"
label = "User"
tenant = "org_id"
properties = ["name", "bio"]

[[nodes]]
table = "public.posts"
key = "id"
label = "Post"
properties = ["title"]

[[edges]]
table = "public.follows"
label = "FOLLOWS"
source = {{ column = "follower_id", node = "User" }}
target = {{ column = "followee_id", node = "User" }}
weight = "weight"

[[edges]]
table = "public.posts"
label = "AUTHORED_BY"
source = {{ column = "id", node = "Post" }}
target = {{ column = "author_id", node = "User" }}
"#
        ),
    )
    .expect("write config");
    path
}

/// A model of the tables that keeps the generated SQL valid (no key conflicts).
pub struct Workload {
    users: BTreeSet<i64>,
    posts: BTreeMap<i64, Option<i64>>,
    follows: BTreeSet<(i64, i64)>,
    next_id: i64,
    rng: fastrand::Rng,
    pub txns: usize,
}

impl Workload {
    pub fn new(seed: u64) -> Self {
        Workload {
            users: BTreeSet::new(),
            posts: BTreeMap::new(),
            follows: BTreeSet::new(),
            next_id: 1,
            rng: fastrand::Rng::with_seed(seed),
            txns: 0,
        }
    }

    fn rand(&mut self, n: u64) -> u64 {
        self.rng.u64(..n.max(1))
    }

    fn pick_user(&mut self) -> Option<i64> {
        if self.users.is_empty() {
            return None;
        }
        let i = self.rand(self.users.len() as u64) as usize;
        self.users.iter().nth(i).copied()
    }

    /// A user id that exists most of the time, sometimes one that does not (dangling edges).
    fn endpoint(&mut self) -> i64 {
        if self.rand(10) == 0 || self.users.is_empty() {
            self.rand(self.next_id as u64 + 5) as i64 + 1
        } else {
            self.pick_user().unwrap_or(1)
        }
    }

    fn fresh(&mut self) -> i64 {
        self.next_id += 1;
        self.next_id
    }

    fn insert_user(&mut self, out: &mut String) {
        let id = self.fresh();
        let org = if self.rand(8) == 0 {
            "NULL".to_string()
        } else {
            (self.rand(4) + 1).to_string()
        };
        let bio = if self.rand(3) == 0 {
            format!("repeat('b{id}', 1500)")
        } else {
            format!("'short bio {id}'")
        };
        out.push_str(&format!(
            "INSERT INTO users VALUES ({id}, {org}, 'user {id}', {bio});\n"
        ));
        self.users.insert(id);
    }

    fn op(&mut self, out: &mut String) {
        match self.rand(14) {
            0 | 1 => self.insert_user(out),
            2 => {
                if let Some(u) = self.pick_user() {
                    let n = self.rand(1000);
                    // Leaves bio untouched: an unchanged TOAST column on the wire.
                    out.push_str(&format!("UPDATE users SET name = 'renamed {n}' WHERE id = {u};\n"));
                }
            }
            3 => {
                if let Some(u) = self.pick_user() {
                    let org = self.rand(4) + 1;
                    out.push_str(&format!("UPDATE users SET org_id = {org} WHERE id = {u};\n"));
                }
            }
            4 => {
                if let Some(u) = self.pick_user() {
                    let new = self.fresh();
                    out.push_str(&format!("UPDATE users SET id = {new} WHERE id = {u};\n"));
                    self.users.remove(&u);
                    self.users.insert(new);
                }
            }
            5 => {
                if let Some(u) = self.pick_user() {
                    out.push_str(&format!("DELETE FROM users WHERE id = {u};\n"));
                    self.users.remove(&u);
                }
            }
            6 | 7 => {
                let (a, b) = (self.endpoint(), self.endpoint());
                if self.follows.insert((a, b)) {
                    let w = self.rand(100) as f64 / 10.0;
                    out.push_str(&format!("INSERT INTO follows VALUES ({a}, {b}, {w});\n"));
                }
            }
            8 => {
                if !self.follows.is_empty() {
                    let i = self.rand(self.follows.len() as u64) as usize;
                    let (a, b) = *self.follows.iter().nth(i).unwrap_or(&(0, 0));
                    if self.rand(2) == 0 {
                        let w = self.rand(100) as f64 / 10.0;
                        out.push_str(&format!(
                            "UPDATE follows SET weight = {w} WHERE follower_id = {a} AND followee_id = {b};\n"
                        ));
                    } else {
                        // Moves an endpoint: the edge table's key changes.
                        let c = self.endpoint();
                        if !self.follows.contains(&(a, c)) {
                            out.push_str(&format!(
                                "UPDATE follows SET followee_id = {c} WHERE follower_id = {a} AND followee_id = {b};\n"
                            ));
                            self.follows.remove(&(a, b));
                            self.follows.insert((a, c));
                        }
                    }
                }
            }
            9 => {
                if !self.follows.is_empty() {
                    let i = self.rand(self.follows.len() as u64) as usize;
                    let (a, b) = *self.follows.iter().nth(i).unwrap_or(&(0, 0));
                    out.push_str(&format!(
                        "DELETE FROM follows WHERE follower_id = {a} AND followee_id = {b};\n"
                    ));
                    self.follows.remove(&(a, b));
                }
            }
            10 => {
                let id = self.fresh();
                let author = if self.rand(5) == 0 { None } else { Some(self.endpoint()) };
                let a = author.map_or("NULL".into(), |a| a.to_string());
                out.push_str(&format!("INSERT INTO posts VALUES ({id}, {a}, 'post {id}');\n"));
                self.posts.insert(id, author);
            }
            11 => {
                if !self.posts.is_empty() {
                    let i = self.rand(self.posts.len() as u64) as usize;
                    let p = *self.posts.keys().nth(i).unwrap_or(&0);
                    // The FK column moves, sometimes to NULL.
                    let author = if self.rand(4) == 0 { None } else { Some(self.endpoint()) };
                    let a = author.map_or("NULL".into(), |a| a.to_string());
                    out.push_str(&format!("UPDATE posts SET author_id = {a} WHERE id = {p};\n"));
                    self.posts.insert(p, author);
                }
            }
            12 => {
                if !self.posts.is_empty() {
                    let i = self.rand(self.posts.len() as u64) as usize;
                    let p = *self.posts.keys().nth(i).unwrap_or(&0);
                    if self.rand(2) == 0 {
                        let new = self.fresh();
                        out.push_str(&format!("UPDATE posts SET id = {new} WHERE id = {p};\n"));
                        let a = self.posts.remove(&p).flatten();
                        self.posts.insert(new, a);
                    } else {
                        out.push_str(&format!("DELETE FROM posts WHERE id = {p};\n"));
                        self.posts.remove(&p);
                    }
                }
            }
            _ => {
                out.push_str("INSERT INTO audit (note) VALUES ('unmapped');\n");
            }
        }
    }

    /// Seed data: `users` users, then follows and posts among them.
    pub fn seed(&mut self, users: usize) -> String {
        let mut out = String::from("BEGIN;\n");
        for _ in 0..users {
            self.insert_user(&mut out);
        }
        for _ in 0..users * 2 {
            let (a, b) = (self.endpoint(), self.endpoint());
            if self.follows.insert((a, b)) {
                out.push_str(&format!("INSERT INTO follows VALUES ({a}, {b}, 1.0);\n"));
            }
        }
        for _ in 0..users / 2 {
            self.op_post(&mut out);
        }
        out.push_str("COMMIT;\n");
        out
    }

    /// Seed data made by the server: `users` users with two follows each, and a post per four
    /// users (fast even for large counts).
    pub fn seed_bulk(&mut self, users: i64) -> String {
        let a = self.next_id + 1;
        let b = a + users - 1;
        for g in a..=b {
            self.users.insert(g);
            for t in [a + (g * 7) % users, a + (g * 13 + 1) % users] {
                self.follows.insert((g, t));
            }
        }
        for g in (a..=b).step_by(4) {
            self.posts.insert(g + users, Some(g));
        }
        self.next_id = b + users + 1;
        format!(
            "INSERT INTO users SELECT g, g % 4, 'seed ' || g, NULL FROM generate_series({a}, {b}) g;\n\
             INSERT INTO follows SELECT g, {a} + (g * 7) % {users}, 1.0 FROM generate_series({a}, {b}) g;\n\
             INSERT INTO follows SELECT g, {a} + (g * 13 + 1) % {users}, 1.0 FROM generate_series({a}, {b}) g \
               ON CONFLICT DO NOTHING;\n\
             INSERT INTO posts SELECT g + {users}, g, 'seed post' FROM generate_series({a}, {b}, 4) g;\n"
        )
    }

    fn op_post(&mut self, out: &mut String) {
        let id = self.fresh();
        let a = self.endpoint();
        out.push_str(&format!("INSERT INTO posts VALUES ({id}, {a}, 'post {id}');\n"));
        self.posts.insert(id, Some(a));
    }

    /// `n` random transactions of 1-5 operations; transaction `truncate_at` truncates follows,
    /// `big_at` is larger than logical_decoding_work_mem (streamed) and rolls back a
    /// savepoint inside, `abort_at` rolls back.
    pub fn script(
        &mut self,
        n: usize,
        truncate_at: Option<usize>,
        big_at: Option<usize>,
        abort_at: Option<usize>,
    ) -> String {
        let mut out = String::new();
        for i in 0..n {
            self.txns += 1;
            out.push_str("BEGIN;\n");
            if Some(i) == truncate_at {
                out.push_str("TRUNCATE follows;\n");
                self.follows.clear();
            } else if Some(i) == big_at {
                let a = self.next_id + 1;
                let b = a + 2999;
                out.push_str(&format!(
                    "INSERT INTO users SELECT g, g % 4, 'bulk ' || g, NULL FROM generate_series({a}, {b}) g;\n\
                     SAVEPOINT s1;\n\
                     INSERT INTO follows SELECT g, g + 1, 9.0 FROM generate_series({}, {}) g;\n\
                     ROLLBACK TO SAVEPOINT s1;\n\
                     INSERT INTO follows SELECT g, g + 1, 2.5 FROM generate_series({a}, {}) g;\n",
                    b + 10,
                    b + 2000,
                    b - 1
                ));
                for g in a..=b {
                    self.users.insert(g);
                }
                for g in a..b {
                    self.follows.insert((g, g + 1));
                }
                self.next_id = b + 2001;
            } else if Some(i) == abort_at {
                let id = self.fresh();
                out.push_str(&format!("INSERT INTO users VALUES ({id}, 1, 'ghost', NULL);\n"));
                out.push_str(&format!("INSERT INTO follows VALUES ({id}, {id}, 1.0);\n"));
                out.push_str("ROLLBACK;\n");
                continue;
            } else {
                let ops = 1 + self.rand(5);
                for _ in 0..ops {
                    self.op(&mut out);
                }
            }
            out.push_str("COMMIT;\n");
        }
        out
    }
}

/// What SQL says the graph must be.
pub fn expected(cluster: &Cluster, db: &str) -> Expected {
    expected_with(cluster, db, "follows")
}

/// As [`expected`], with the follows table under another name.
pub fn expected_with(cluster: &Cluster, db: &str, follows: &str) -> Expected {
    let mut e = Expected::default();
    for line in cluster.psql(db, "SELECT id, org_id FROM users").lines() {
        let (id, org) = line.split_once('|').expect("row");
        e.nodes
            .insert(format!("User:{id}"), (!org.is_empty()).then(|| org.to_string()));
    }
    for line in cluster.psql(db, "SELECT id FROM posts").lines() {
        e.nodes.insert(format!("Post:{line}"), None);
    }
    for line in cluster
        .psql(db, &format!("SELECT follower_id, followee_id FROM {follows}"))
        .lines()
    {
        let (a, b) = line.split_once('|').expect("row");
        e.edges
            .push((format!("User:{a}"), "FOLLOWS".into(), format!("User:{b}")));
    }
    for line in cluster
        .psql(db, "SELECT id, author_id FROM posts WHERE author_id IS NOT NULL")
        .lines()
    {
        let (p, a) = line.split_once('|').expect("row");
        e.edges
            .push((format!("Post:{p}"), "AUTHORED_BY".into(), format!("User:{a}")));
    }
    e
}

/// A writer that keeps inserting users and follows until `stop`, ids from `next` (the users
/// positionally, so it goes on across a column rename).
pub fn writer(
    cluster: &'static Cluster,
    db: String,
    stop: Arc<AtomicBool>,
    next: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let id = next.fetch_add(1, Ordering::SeqCst);
            cluster.psql(
                &db,
                &format!(
                    "BEGIN; INSERT INTO users VALUES ({id}, {org}, 'user {id}', NULL); \
                     INSERT INTO follows VALUES ({id}, 1, 1.0) ON CONFLICT DO NOTHING; \
                     UPDATE users SET org_id = {org} WHERE id = {id} - 5; COMMIT;",
                    org = id % 3
                ),
            );
        }
    })
}
