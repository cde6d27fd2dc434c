"""Architecture search as an Optuna study: the engine, study helpers and reports."""

from llmnas.search.engine import Objective, SearchSummary, open_study, prepare_space, run_search
from llmnas.search.study import load_study, select_trial, trial_arch

__all__ = ["Objective", "SearchSummary", "load_study", "open_study", "prepare_space", "run_search", "select_trial",
           "trial_arch"]
