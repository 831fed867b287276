"""Record names and keys exchanged between the ServerApp and the ClientApps.

Both sides import these constants; a key is spelled exactly once. The
privacy report lists :data:`SITE_REPLY_FIELDS` as everything a site sends.
"""

from __future__ import annotations

# --- server -> site (train message) ---
GLOBAL_ARRAYS = "global"  # ArrayRecord: global generator weights (public: aggregate of DP updates)
TRAIN_CONFIG = "train-config"  # ConfigRecord: TrainSettings fields, see shared.config

# --- site -> server (train reply) ---
UPDATE_ARRAYS = "update"  # ArrayRecord: L2-clipped (new - global) weights
PRIVACY_METRICS = "privacy"  # MetricRecord: the site's cumulative accounting (public parameters)
SITE_INFO = "site"  # ConfigRecord: site name, status, accountant, decline reason

# Fields of PRIVACY_METRICS. Each is a function of public parameters (σ, q, steps, δ)
# or of the ledger, so sending them reveals nothing about individual rows, except
# UPDATE_NORM_CLIPPED: a function of the site's own (DP) update, which the server sees
# anyway without secure aggregation; under secure aggregation it is not sent.
EPSILON = "epsilon"  # cumulative ε over all rounds and runs at this site
DELTA = "delta"
NOISE_MULTIPLIER = "noise-multiplier"  # σ of this round
SAMPLE_RATE = "sample-rate"  # Poisson sampling rate q of this round
MAX_GRAD_NORM = "max-grad-norm"  # per-sample clip norm C of this round
STEPS = "steps"  # DP-SGD steps run this round
TOTAL_STEPS = "total-steps"  # DP-SGD steps over the site's whole ledger
UPDATE_NORM_CLIPPED = "update-clipped"  # 1.0 when the update was scaled down to the bound
# Opt-in only (site option share-timing; simulated sites opt in): wall-clock seconds of
# the round's local DP training (0.1 s resolution), for progress and overhead figures.
# Not DP-accounted: it grows with the expected batch q·n and so hints at the row count.
# The reply's latency hints at the same thing, but less sharply, so real sites keep it
# off unless the consortium agrees.
TRAIN_SECONDS = "train-seconds"
# Opt-in only (site option share-row-count): the site's row count is private.
NUM_ROWS = "num-rows"

# Fields of SITE_INFO.
SITE_NAME = "name"
STATUS = "status"  # "trained" or "declined"
REASON = "reason"  # human-readable decline reason
ACCOUNTANT = "accountant"
SECURE_MODE = "secure-mode"
NOISE_SEED = "noise-seed"  # "secret" (site's OS randomness) or "simulation" (derived from run seed)
SCHEMA_FINGERPRINT = "schema-fingerprint"

STATUS_TRAINED = "trained"
STATUS_DECLINED = "declined"

SITE_REPLY_FIELDS: dict[str, tuple[str, ...]] = {
    UPDATE_ARRAYS: ("<one array per generator parameter>",),
    PRIVACY_METRICS: (
        EPSILON,
        DELTA,
        NOISE_MULTIPLIER,
        SAMPLE_RATE,
        MAX_GRAD_NORM,
        STEPS,
        TOTAL_STEPS,
        UPDATE_NORM_CLIPPED,
    ),
    SITE_INFO: (SITE_NAME, STATUS, REASON, ACCOUNTANT, SECURE_MODE, NOISE_SEED, SCHEMA_FINGERPRINT),
}
OPT_IN_FIELDS: dict[str, tuple[str, ...]] = {PRIVACY_METRICS: (NUM_ROWS, TRAIN_SECONDS)}

# --- deployment only: the name the coordinator registered the receiving node's key under ---
# Added to every server -> site message by server.identity.NamedGrid; the ClientApp's mod
# (client.identity) removes it and refuses the message if the site runs under another
# --site-name, before any handler computes or charges anything. Public: the registry's names.
REGISTERED_AS = "registered-as"  # ConfigRecord {SITE_NAME: name}

# --- secure aggregation (shared.secagg): message types "train.<action>" ---
SECAGG_SETUP = "secagg_setup"  # server -> site: index, threshold; site -> server: public keys
SECAGG_SHARE_KEYS = "secagg_share_keys"  # server -> site: roster; site -> server: ciphertexts
SECAGG_TRAIN = "secagg_train"  # as a train message, plus the peers; reply masks the update
SECAGG_UNMASK = "secagg_unmask"  # server -> site: survivors, dropped, inbox; site -> server: shares
# Noise placement "distributed" (shared.distdp): stage 3 of each step's secure round.
# Server -> site: GLOBAL_ARRAYS (θ), TRAIN_CONFIG (DistributedStepSettings), SECAGG (peers);
# site -> server: the SECAGG_REPLY_FIELDS, MASKED_UPDATE holding the masked noisy share.
DISTDP_STEP = "distdp_step"
SECAGG = "secagg"  # ConfigRecord carrying the fields below, in every stage
MASKED_UPDATE = "masked-update"  # ArrayRecord: one uint32/64 vector, the masked quantised update
MASKED_VECTOR = "vector"  # the array's name inside MASKED_UPDATE

SA_INDEX = "index"  # the site's protocol index (1..N)
SA_THRESHOLD = "threshold"
SA_NUM_SITES = "num-sites"
SA_BITS = "bits"
SA_CLIP = "clip"
SA_CONTEXT = "context"  # bytes binding keys and ciphertexts to this round
# Set-up only: the stage-3 message type this key set-up opens (SECAGG_TRAIN, DISTDP_STEP,
# RELEASE_SHARE or ENCODER_SHARE). Its config record travels with the set-up, so a site
# that could not afford the mechanism refuses before any site computes (client.precheck).
SA_STAGE = "stage"
SA_C_PK = "c-pk"
SA_S_PK = "s-pk"
SA_PEERS = "peers"  # list of indices; parallel lists below
SA_C_PKS = "c-pks"
SA_S_PKS = "s-pks"
SA_CIPHERTEXTS = "ciphertexts"
SA_SURVIVORS = "survivors"
SA_DROPPED = "dropped"
SA_SEED_OWNERS = "seed-owners"
SA_SEED_SHARES = "seed-shares"
SA_KEY_OWNERS = "key-owners"
SA_KEY_SHARES = "key-shares"

# Under secure aggregation the train reply carries MASKED_UPDATE instead of UPDATE_ARRAYS.
SECAGG_REPLY_FIELDS: dict[str, tuple[str, ...]] = {
    MASKED_UPDATE: (MASKED_VECTOR,),
    PRIVACY_METRICS: tuple(
        f for f in SITE_REPLY_FIELDS[PRIVACY_METRICS] if f != UPDATE_NORM_CLIPPED
    ),
    SITE_INFO: SITE_REPLY_FIELDS[SITE_INFO],
}

# --- DP numeric encoder (shared.dp_quantile): message type "train.encoder_histogram" ---
# Sent once, before round 1, when the run's numeric-encoder is "dp-quantile".
ENCODER_HISTOGRAM = "encoder_histogram"
ENCODER_CONFIG = "encoder-config"  # ConfigRecord: shared.dp_quantile.HistogramRequest fields
HISTOGRAM_ARRAYS = "histogram"  # ArrayRecord: the site's noisy (numeric columns, bins) counts
HISTOGRAM_COUNTS = "counts"  # the array's name inside HISTOGRAM_ARRAYS
# The reply carries the noisy histogram (Gaussian mechanism, charged to the ledger
# first) and the same public accounting records as a train reply; STEPS is 1 and
# NOISE_MULTIPLIER / SAMPLE_RATE / MAX_GRAD_NORM are σ_h, 1 and the sensitivity √d.
ENCODER_REPLY_FIELDS: dict[str, tuple[str, ...]] = {
    HISTOGRAM_ARRAYS: (HISTOGRAM_COUNTS,),
    PRIVACY_METRICS: SITE_REPLY_FIELDS[PRIVACY_METRICS],
    SITE_INFO: SITE_REPLY_FIELDS[SITE_INFO],
}

# --- DP effect calibration (shared.effect): message type "train.effect_calibration" ---
# Sent once, after the last round, when the run's generator is "staged" and its
# effect-budget-fraction is above 0. The request carries GLOBAL_ARRAYS (the final
# weights) and EFFECT_CONFIG; the reply carries the site's noisy
# (Σ φ_1, …, Σ φ_{A-1}, n) (Gaussian mechanism, charged to the ledger first) and the
# public accounting records; STEPS is 1 and NOISE_MULTIPLIER / SAMPLE_RATE /
# MAX_GRAD_NORM are σ_e, 1 and the sensitivity √((A-1)B² + 1).
EFFECT_CALIBRATION = "effect_calibration"
EFFECT_CONFIG = "effect-config"  # ConfigRecord: shared.effect.EffectRequest fields
EFFECT_ARRAYS = "effect"  # ArrayRecord: the site's noisy score sums, arm and row counts
EFFECT_SUMS = "sums"  # the array's name inside EFFECT_ARRAYS
EFFECT_REPLY_FIELDS: dict[str, tuple[str, ...]] = {
    EFFECT_ARRAYS: (EFFECT_SUMS,),
    PRIVACY_METRICS: SITE_REPLY_FIELDS[PRIVACY_METRICS],
    SITE_INFO: SITE_REPLY_FIELDS[SITE_INFO],
}

# --- Release families (shared.models.release, e.g. "dp-marginal"): "train.release_statistics" ---
# A release family has no DP-SGD rounds: the whole run is one message per stage. The
# request carries GLOBAL_ARRAYS (the model as fitted so far: stage s may depend on the
# fit of stage s - 1) and RELEASE_CONFIG; the reply carries the site's statistics of
# that stage plus N(0, (σ_s Δ_s)²) per coordinate (Gaussian mechanism, charged to the
# ledger first) and the public accounting records; STEPS is 1 and NOISE_MULTIPLIER /
# SAMPLE_RATE / MAX_GRAD_NORM are σ_s, 1 and the stage's L2 sensitivity Δ_s.
RELEASE_STATISTICS = "release_statistics"
RELEASE_CONFIG = "release-config"  # ConfigRecord: shared.models.release_request fields
RELEASE_ARRAYS = "release"  # ArrayRecord: the site's noisy statistics of one stage
RELEASE_VALUES = "statistics"  # the array's name inside RELEASE_ARRAYS
RELEASE_REPLY_FIELDS: dict[str, tuple[str, ...]] = {
    RELEASE_ARRAYS: (RELEASE_VALUES,),
    PRIVACY_METRICS: SITE_REPLY_FIELDS[PRIVACY_METRICS],
    SITE_INFO: SITE_REPLY_FIELDS[SITE_INFO],
}
# Under secure aggregation, stage 3 of each release stage's secure round is
# "train.release_share": the same request plus SECAGG (peers); the reply carries the
# accounting records and MASKED_UPDATE, the masked ring share of the site's counts plus
# discrete Gaussian noise of std σ_sΔ_s/√K (shared.distdp.release).
RELEASE_SHARE = "release_share"
# The DP encoder's histograms under secure aggregation: "train.encoder_share", the
# ENCODER_CONFIG request plus SECAGG; the reply has the RELEASE_SHARE_REPLY_FIELDS, the
# flattened (columns × bins) counts plus discrete Gaussian noise of std σ_h√d, masked.
ENCODER_SHARE = "encoder_share"
RELEASE_SHARE_REPLY_FIELDS: dict[str, tuple[str, ...]] = {
    MASKED_UPDATE: (MASKED_VECTOR,),
    PRIVACY_METRICS: SITE_REPLY_FIELDS[PRIVACY_METRICS],
    SITE_INFO: SITE_REPLY_FIELDS[SITE_INFO],
}

# --- The run's plan (shared.run_plan): message type "train.plan_check" ---
# Sent once to every site before the run's first charge (also on resume, with what is
# left). The request carries PLAN_CONFIG; the site reads only its schema and ledger,
# charges nothing and answers with the fields below: its cumulative ε now and after the
# whole plan (functions of the ledger's public parameters and the plan), and a status.
# A declined plan's reason says how many training rounds the site could still afford.
PLAN_CHECK = "plan_check"
PLAN_CONFIG = "plan"  # ConfigRecord: shared.run_plan.PlanRequest fields
PROJECTED_EPSILON = "projected-epsilon"  # cumulative ε after the whole plan (0 if declined)
STATUS_AFFORDABLE = "affordable"
PLAN_REPLY_FIELDS: dict[str, tuple[str, ...]] = {
    PRIVACY_METRICS: (EPSILON, DELTA, PROJECTED_EPSILON),
    SITE_INFO: (SITE_NAME, STATUS, REASON),
}
