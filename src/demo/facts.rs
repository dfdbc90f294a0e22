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
    /// line break or surrounding spaces. A (subject, relation) given with several objects is
    /// one question with several right answers (a knowledge graph's many-valued relations);
    /// the same fact twice is kept once.
    pub fn parse_tsv(text: &str) -> Result<Self> {
        let mut facts = Vec::new();
        let mut problems = Vec::new();
        let mut seen = std::collections::HashSet::<(String, String, String)>::new();
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
            if seen.insert((fact.subject.clone(), fact.relation.clone(), fact.object.clone())) {
                facts.push(fact);
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

    /// For each fact, the index of its question: facts with the same prompt (subject and
    /// relation) share one, numbered in order of first appearance.
    pub fn question_ids(facts: &[Fact]) -> Vec<usize> {
        let mut ids = std::collections::HashMap::<String, usize>::new();
        facts
            .iter()
            .map(|f| {
                let next = ids.len();
                *ids.entry(f.prompt()).or_insert(next)
            })
            .collect()
    }

    /// The number of distinct questions (prompts).
    pub fn questions(&self) -> usize {
        Self::question_ids(&self.facts)
            .into_iter()
            .max()
            .map_or(0, |m| m + 1)
    }

    /// The facts of `n` questions drawn uniformly at random from `seed` (every answer of
    /// each, question by question; all of them when there are fewer). With one answer per
    /// question, `n` random facts.
    pub fn sample_questions(&self, n: usize, seed: u64) -> Vec<Fact> {
        let ids = Self::question_ids(&self.facts);
        let mut answers = vec![Vec::new(); ids.iter().max().map_or(0, |m| m + 1)];
        for (fact, &q) in self.facts.iter().zip(&ids) {
            answers[q].push(fact.clone());
        }
        let mut rng = Rng::new(seed);
        for i in (1..answers.len()).rev() {
            answers.swap(i, rng.below(i as u64 + 1) as usize);
        }
        answers.into_iter().take(n).flatten().collect()
    }

    /// The recall of answering each relation with the object that answers most of its
    /// questions: what a model scores that learned the object pools but no fact.
    pub fn guessing_recall(&self) -> f32 {
        let mut counts = std::collections::BTreeMap::<(&str, &str), usize>::new();
        let mut asked = std::collections::BTreeSet::<(&str, &str, &str)>::new();
        for f in &self.facts {
            if asked.insert((&f.subject, &f.relation, &f.object)) {
                *counts.entry((&f.relation, &f.object)).or_default() += 1;
            }
        }
        let mut best = std::collections::BTreeMap::<&str, usize>::new();
        for ((relation, _), n) in counts {
            let b = best.entry(relation).or_default();
            *b = (*b).max(n);
        }
        best.values().sum::<usize>() as f32 / self.questions().max(1) as f32
    }
}
