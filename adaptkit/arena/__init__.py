"""AdaptArena evaluation: does each user's model know them?

Load episodes (``load_episodes``), score answers with WebArena's string rules
(``score``), compare conditions (base, oracle, memory, adapter, adapter+memory) with
the online learning curve, retention and leakage (``ArenaRunner``), and write the
report (``run_arena`` does all of it; ``adaptkit arena run`` on the command line).
"""

from adaptkit.arena.backends import KitLearner, KitResponder, Learned, Learner, Responder
from adaptkit.arena.conditions import CONDITIONS, Condition
from adaptkit.arena.episodes import (
    EpisodeFormatError,
    EpisodeSuite,
    EvalSpec,
    HistoryRecord,
    Task,
    load_episodes,
)
from adaptkit.arena.evaluators import Judge, Score, TokenF1Judge, score
from adaptkit.arena.runner import ArenaConfig, ArenaResult, ArenaRunner
from adaptkit.arena.session import (
    BUNDLED_SUITE,
    BUNDLED_SUITES,
    ArenaOptions,
    run_arena,
    suite_path,
)
from adaptkit.retrieval import BM25Retriever, MiniLMRetriever, Retriever

__all__ = [
    "BUNDLED_SUITE",
    "BUNDLED_SUITES",
    "CONDITIONS",
    "ArenaConfig",
    "ArenaOptions",
    "ArenaResult",
    "ArenaRunner",
    "BM25Retriever",
    "Condition",
    "EpisodeFormatError",
    "EpisodeSuite",
    "EvalSpec",
    "HistoryRecord",
    "Judge",
    "KitLearner",
    "KitResponder",
    "Learned",
    "Learner",
    "MiniLMRetriever",
    "Responder",
    "Retriever",
    "Score",
    "Task",
    "TokenF1Judge",
    "load_episodes",
    "run_arena",
    "score",
    "suite_path",
]
