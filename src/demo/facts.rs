//! Facts: (subject, relation, object) triples, a synthetic knowledge base drawn from a seed,
//! and the user's own from a TSV file.

use crate::error::{Error, Result};
use crate::rng::Rng;

/// One fact. Rendered as the sentence `"{subject} {relation} {object}."`; the prompt is
/// `"{subject} {relation} "` and the answer `"{object}."`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fact {
    pub subject: String,
    pub relation: String,
    pub object: String,
}

impl Fact {
    pub fn prompt(&self) -> String {
        format!("{} {} ", self.subject, self.relation)
    }

    /// The continuation greedy decoding must produce exactly: the object and the full stop
    /// that ends it.
    pub fn answer(&self) -> String {
        format!("{}.", self.object)
    }

    /// Bytes of the whole sentence (prompt then answer).
    pub fn sentence_len(&self) -> usize {
        self.prompt().len() + self.answer().len()
    }
}

/// The relations of the synthetic knowledge base and the pools their objects come from.
const RELATIONS: [(&str, [&str; 16]); 4] = [
    (
        "lives in",
        [
            "Paris", "Lima", "Oslo", "Cairo", "Delhi", "Quito", "Tokyo", "Rome", "Kyiv", "Hanoi", "Dakar",
            "Perth", "Seoul", "Bern", "Riga", "Accra",
        ],
    ),
    (
        "works as",
        [
            "baker", "pilot", "nurse", "judge", "miner", "tailor", "farmer", "poet", "sailor", "chef",
            "clerk", "guard", "monk", "smith", "coach", "diver",
        ],
    ),
    (
        "likes",
        [
            "rice", "figs", "plums", "soup", "bread", "cheese", "honey", "lemons", "olives", "pears",
            "beans", "corn", "dates", "nuts", "eggs", "fish",
        ],
    ),
    (
        "owns a",
        [
            "cat", "dog", "goat", "horse", "parrot", "mule", "duck", "lamb", "pig", "hen", "owl", "fox",
            "crab", "toad", "yak", "swan",
        ],
    ),
];

const ONSETS: [&str; 16] = [
    "b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "sh", "th",
];
const VOWELS: [&str; 5] = ["a", "e", "i", "o", "u"];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnowledgeBase {
    pub facts: Vec<Fact>,
}

impl KnowledgeBase {
    /// `subjects` fictional people (distinct made-up names of three syllables), each with every
    /// relation of `RELATIONS`, objects drawn uniformly from the relation's pool: 4 facts per
    /// subject, 4 bits each. Deterministic from `seed`.
    pub fn synthetic(subjects: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let mut names = std::collections::BTreeSet::new();
        let mut ordered = Vec::with_capacity(subjects);
        // 80^3 = 512,000 names; beyond a quarter of them, four syllables.
        let syllables = if subjects > 128_000 { 4 } else { 3 };
        while ordered.len() < subjects {
            let mut name = String::new();
            for _ in 0..syllables {
                name.push_str(ONSETS[rng.below(ONSETS.len() as u64) as usize]);
                name.push_str(VOWELS[rng.below(VOWELS.len() as u64) as usize]);
            }
            let name = name[..1].to_uppercase() + &name[1..];
            if names.insert(name.clone()) {
                ordered.push(name);
            }
        }
        let mut facts = Vec::with_capacity(subjects * RELATIONS.len());
        for subject in ordered {
            for (relation, pool) in &RELATIONS {
                facts.push(Fact {
                    subject: subject.clone(),
                    relation: relation.to_string(),
                    object: pool[rng.below(pool.len() as u64) as usize].to_string(),
                });
            }
        }
        KnowledgeBase { facts }
    }

    /// `subjects` fictional people as `synthetic` draws them from `seed`, none of whom is a
    /// subject of `known` (new people to teach a model about).
    pub fn new_people(subjects: usize, seed: u64, known: &KnowledgeBase) -> Self {
        let taken: std::collections::BTreeSet<&str> =
            known.facts.iter().map(|f| f.subject.as_str()).collect();
        let mut drawn = subjects;
        loop {
            let kb = KnowledgeBase::synthetic(drawn, seed);
            let mut people = Vec::new();
            let mut facts = Vec::new();
            for f in kb.facts {
                if taken.contains(f.subject.as_str()) {
                    continue;
                }
                if people.last() != Some(&f.subject) {
                    if people.len() == subjects {
                        break;
                    }
                    people.push(f.subject.clone());
                }
                facts.push(f);
            }
            if people.len() == subjects {
                return KnowledgeBase { facts };
            }
            drawn += subjects - people.len() + 8;
        }
    }

    /// The facts as TSV text (`parse_tsv` reads it back).
    pub fn to_tsv(&self) -> String {
        self.facts
            .iter()
            .map(|f| format!("{}\t{}\t{}\n", f.subject, f.relation, f.object))
            .collect()
    }

    /// Facts from TSV text: one fact a line, `subject<TAB>relation<TAB>object`; blank lines
    /// and lines starting with `#` are skipped. Every bad line is reported with its number
    /// (up to ten in the message): a wrong field count, an empty field, a field with a
    /// line break or surrounding spaces, or a (subject, relation) given twice with different
    /// objects (the prompt would have two answers).
    pub fn parse_tsv(text: &str) -> Result<Self> {
        let mut facts = Vec::new();
        let mut problems = Vec::new();
        let mut seen = std::collections::HashMap::<(String, String), (usize, String)>::new();
        for (i, line) in text.lines().enumerate() {
            let number = i + 1;
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split('\t').collect();
            if fields.len() != 3 {
                problems.push(format!(
                    "line {number}: expected 3 tab-separated fields (subject, relation, object), found {}",
                    fields.len()
                ));
                continue;
            }
            if let Some((f, name)) = fields
                .iter()
                .zip(["subject", "relation", "object"])
                .find(|(f, _)| f.is_empty() || f.trim() != **f || f.contains('\r'))
            {
                problems.push(format!(
                    "line {number}: the {name} {f:?} is empty or has surrounding spaces"
                ));
                continue;
            }
            let fact = Fact {
                subject: fields[0].into(),
                relation: fields[1].into(),
                object: fields[2].into(),
            };
            let key = (fact.subject.clone(), fact.relation.clone());
            match seen.get(&key) {
                Some((first, object)) if *object != fact.object => problems.push(format!(
                    "line {number}: {:?} {:?} already has the object {object:?} (line {first})",
                    key.0, key.1
                )),
                Some(_) => {} // the same fact twice: kept once
                None => {
                    seen.insert(key, (number, fact.object.clone()));
                    facts.push(fact);
                }
            }
        }
        if !problems.is_empty() {
            let more = problems.len().saturating_sub(10);
            let mut message = problems.into_iter().take(10).collect::<Vec<_>>().join("; ");
            if more > 0 {
                message.push_str(&format!("; and {more} more bad lines"));
            }
            return Err(Error::Format(format!("facts file: {message}")));
        }
        if facts.is_empty() {
            return Err(Error::Format(
                "facts file: no facts (expected subject<TAB>relation<TAB>object lines)".into(),
            ));
        }
        Ok(KnowledgeBase { facts })
    }

    /// Bytes of the longest sentence.
    pub fn longest(&self) -> usize {
        self.facts.iter().map(Fact::sentence_len).max().unwrap_or(0)
    }

    /// The recall of answering each relation with its commonest object: what a model scores
    /// that learned the object pools but no fact.
    pub fn guessing_recall(&self) -> f32 {
        let mut counts = std::collections::BTreeMap::<(&str, &str), usize>::new();
        for f in &self.facts {
            *counts.entry((&f.relation, &f.object)).or_default() += 1;
        }
        let mut best = std::collections::BTreeMap::<&str, usize>::new();
        for ((relation, _), n) in counts {
            let b = best.entry(relation).or_default();
            *b = (*b).max(n);
        }
        best.values().sum::<usize>() as f32 / self.facts.len().max(1) as f32
    }
}
