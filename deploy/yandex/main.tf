# npf-loyalty on Yandex Cloud: the same handlers as on AWS, with the data kept in Russia
# (152-FZ). See README.md beside this file for packaging and the commands.
#
#   ingest  <- Object Storage trigger, prefix uploads/
#   score   <- Object Storage trigger, prefix features/_current + suffix .json
#   report  <- timer, 05:00 UTC on the first day of each quarter
#   bot     <- API Gateway POST /telegram/webhook (Telegram's secret-token header is checked
#              by bot/webhook.py itself)
#
# Access: every function has its own service account with NO storage role on the folder; what
# it may read and write is granted per prefix in the bucket policy (CanonicalUser = the
# account's id). The handlers talk S3 (boto3) with the account's static access key, which
# lives in a Lockbox secret of its own and reaches the function as AWS_ACCESS_KEY_ID /
# AWS_SECRET_ACCESS_KEY. The bot token and webhook secret are in a Lockbox secret made outside
# Terraform (README), so their values never enter the Terraform state.

terraform {
  required_version = ">= 1.5"
  required_providers {
    yandex = {
      source  = "yandex-cloud/yandex"
      version = ">= 0.130"
    }
  }
}

provider "yandex" {
  cloud_id  = var.cloud_id
  folder_id = var.folder_id
  zone      = "ru-central1-a"
}

# --- variables -------------------------------------------------------------------------------
variable "cloud_id" {
  type = string
}

variable "folder_id" {
  type = string
}

variable "name" {
  description = "Prefix of every resource name"
  type        = string
  default     = "npf-loyalty"
}

variable "bucket_name" {
  description = "Globally unique name of the data bucket"
  type        = string
}

variable "dist_dir" {
  description = "Where the function zips are (README: Packaging)"
  type        = string
  default     = "../../dist/yandex"
}

variable "bot_secret_id" {
  description = "Lockbox secret with entries bot_token and webhook_secret (made with yc, README)"
  type        = string
}

variable "bot_secret_version_id" {
  description = "Its version to use (yc lockbox secret get ... --format json | jq .current_version.id)"
  type        = string
}

variable "manager_ids" {
  description = "Telegram user ids allowed to use the bot, comma-separated (not secret)"
  type        = string
  default     = ""
}

variable "admin_ids" {
  description = "Telegram user ids allowed to /grant and /revoke"
  type        = string
  default     = ""
}

variable "reports_chat_id" {
  description = "Telegram chat that receives the quarterly report (empty: no post)"
  type        = string
  default     = ""
}

variable "log_retention" {
  description = "How long Cloud Logging keeps the functions' logs"
  type        = string
  default     = "2160h" # 90 days
}

# --- what each function is -------------------------------------------------------------------
locals {
  bucket_arn = "arn:aws:s3:::${var.bucket_name}"

  # Same prefixes as npf_loyalty.storage.Keys and template.yaml.
  functions = {
    ingest = {
      entrypoint = "handler.handler"
      memory     = 4096 # raise towards the quota's maximum for very large dumps
      timeout    = 600  # the functions' maximum; see README for dumps that need longer
      duckdb_mem = "3GB"
      read       = ["uploads/*", "clean/*", "features/*"]
      write      = ["clean/*", "quarantine/*", "features/*"]
      disk_gb    = 10 # DuckDB spills here; /tmp of a function is small
    }
    score = {
      entrypoint = "handler.handler"
      memory     = 4096
      timeout    = 600
      duckdb_mem = "2GB"
      read       = ["features/*", "models/*", "scores/*", "lookup/*"]
      write      = ["scores/*", "lookup/*"]
      disk_gb    = 4
    }
    report = {
      entrypoint = "handler.handler"
      memory     = 2048
      timeout    = 600
      duckdb_mem = "1GB"
      read       = ["features/*", "scores/*", "models/*", "clean/*", "quarantine/*", "reports/*"]
      write      = ["reports/*"]
      disk_gb    = 2
    }
    bot = {
      # the zip carries the bot/ package and a one-line index.py (README: Packaging)
      entrypoint = "index.handler"
      memory     = 1024
      timeout    = 60
      duckdb_mem = "512MB"
      read       = ["lookup/*", "reports/*", "state/managers.json", "state/refused.json"]
      write      = ["state/managers.json", "state/refused.json"]
      disk_gb    = 1
    }
  }

  work_dir = "/function/storage/work"
}

# --- encryption key and bucket ---------------------------------------------------------------
resource "yandex_kms_symmetric_key" "data" {
  name                = "${var.name}-data"
  description         = "npf-loyalty data bucket (client personal data)"
  default_algorithm   = "AES_256"
  rotation_period     = "8760h"
  deletion_protection = true
}

resource "yandex_iam_service_account" "fn" {
  for_each    = local.functions
  name        = "${var.name}-${each.key}"
  description = "npf-loyalty ${each.key}: its prefixes only (bucket policy)"
}

# The back office uploads with this account's static key (made with yc, README): uploads/ only.
resource "yandex_iam_service_account" "uploader" {
  name        = "${var.name}-uploader"
  description = "npf-loyalty back office: put dumps under uploads/"
}

# Triggers and the API gateway invoke functions as this account, and nothing else.
resource "yandex_iam_service_account" "invoker" {
  name        = "${var.name}-invoker"
  description = "npf-loyalty triggers and API gateway: invoke the functions"
}

resource "yandex_storage_bucket" "data" {
  bucket    = var.bucket_name
  folder_id = var.folder_id

  anonymous_access_flags {
    read        = false
    list        = false
    config_read = false
  }

  # every version is kept: a re-upload or a delete leaves the original raw dump recoverable
  versioning {
    enabled = true
  }

  server_side_encryption_configuration {
    rule {
      apply_server_side_encryption_by_default {
        kms_master_key_id = yandex_kms_symmetric_key.data.id
        sse_algorithm     = "aws:kms"
      }
    }
  }

  # No rule touches uploads/ or models/: raw dumps and promoted models are kept forever.
  lifecycle_rule {
    id      = "quarantine-expires-after-a-year"
    enabled = true
    prefix  = "quarantine/"
    expiration {
      days = 365
    }
    noncurrent_version_expiration {
      days = 30
    }
  }

  dynamic "lifecycle_rule" {
    for_each = toset(["clean/", "features/", "scores/", "lookup/", "reports/", "state/"])
    content {
      id      = "${trimsuffix(lifecycle_rule.value, "/")}-noncurrent"
      enabled = true
      prefix  = lifecycle_rule.value
      noncurrent_version_expiration {
        days = 90
      }
    }
  }

  lifecycle_rule {
    id                                     = "abort-stale-multipart-uploads"
    enabled                                = true
    abort_incomplete_multipart_upload_days = 7
  }

  # Per-prefix access, one statement per function and direction. ListBucket is granted on the
  # bucket as a whole: storage.exists() needs "404 Not Found" for a missing key, which S3 only
  # answers to a caller who may list (key names only, never contents).
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = concat(
      [for fn, spec in local.functions : {
        Sid       = "${fn}-read"
        Effect    = "Allow"
        Principal = { CanonicalUser = yandex_iam_service_account.fn[fn].id }
        Action    = ["s3:GetObject"]
        Resource  = [for p in spec.read : "${local.bucket_arn}/${p}"]
      }],
      [for fn, spec in local.functions : {
        Sid       = "${fn}-write"
        Effect    = "Allow"
        Principal = { CanonicalUser = yandex_iam_service_account.fn[fn].id }
        Action    = ["s3:PutObject", "s3:AbortMultipartUpload"]
        Resource  = [for p in spec.write : "${local.bucket_arn}/${p}"]
      }],
      [{
        Sid       = "key-names-for-not-found"
        Effect    = "Allow"
        Principal = { CanonicalUser = [for sa in yandex_iam_service_account.fn : sa.id] }
        Action    = ["s3:ListBucket"]
        Resource  = [local.bucket_arn]
      }],
      [{
        Sid       = "uploader-puts-dumps"
        Effect    = "Allow"
        Principal = { CanonicalUser = yandex_iam_service_account.uploader.id }
        Action    = ["s3:PutObject", "s3:AbortMultipartUpload"]
        Resource  = ["${local.bucket_arn}/uploads/*"]
      }],
      [{
        # raw dumps are write-once (storage.py refuses too); this holds for people as well
        Sid       = "raw-uploads-are-never-deleted"
        Effect    = "Deny"
        Principal = "*"
        Action    = ["s3:DeleteObject", "s3:DeleteObjectVersion"]
        Resource  = ["${local.bucket_arn}/uploads/*"]
      }],
    )
  })
}

# Encrypting and decrypting objects needs the key: granted per key, not per prefix.
resource "yandex_kms_symmetric_key_iam_binding" "data_users" {
  symmetric_key_id = yandex_kms_symmetric_key.data.id
  role             = "kms.keys.encrypterDecrypter"
  members = concat(
    [for sa in yandex_iam_service_account.fn : "serviceAccount:${sa.id}"],
    ["serviceAccount:${yandex_iam_service_account.uploader.id}"],
  )
}

# --- each function's S3 key, in a Lockbox secret only that function can read ---------------
resource "yandex_iam_service_account_static_access_key" "fn" {
  for_each           = local.functions
  service_account_id = yandex_iam_service_account.fn[each.key].id
  description        = "npf-loyalty ${each.key}: S3 API access (boto3)"
}

resource "yandex_lockbox_secret" "s3" {
  for_each    = local.functions
  name        = "${var.name}-${each.key}-s3"
  description = "S3 static key of the ${each.key} function"
}

resource "yandex_lockbox_secret_version" "s3" {
  for_each  = local.functions
  secret_id = yandex_lockbox_secret.s3[each.key].id
  entries {
    key        = "access_key_id"
    text_value = yandex_iam_service_account_static_access_key.fn[each.key].access_key
  }
  entries {
    key        = "secret_access_key"
    text_value = yandex_iam_service_account_static_access_key.fn[each.key].secret_key
  }
}

resource "yandex_lockbox_secret_iam_binding" "s3" {
  for_each  = local.functions
  secret_id = yandex_lockbox_secret.s3[each.key].id
  role      = "lockbox.payloadViewer"
  members   = ["serviceAccount:${yandex_iam_service_account.fn[each.key].id}"]
}

# The bot's token and webhook secret: the bot reads both; the report reads the token to post.
resource "yandex_lockbox_secret_iam_binding" "bot" {
  secret_id = var.bot_secret_id
  role      = "lockbox.payloadViewer"
  members = [
    "serviceAccount:${yandex_iam_service_account.fn["bot"].id}",
    "serviceAccount:${yandex_iam_service_account.fn["report"].id}",
  ]
}

# --- logs, dead letters -----------------------------------------------------------------------
resource "yandex_logging_group" "functions" {
  name             = var.name
  retention_period = var.log_retention
}

# Failed trigger invocations (after retries) land here, so an event is never lost silently.
# Message Queue is managed with a static key of its own account (a provider requirement).
resource "yandex_iam_service_account" "queues" {
  name        = "${var.name}-queues"
  description = "npf-loyalty: manages and writes the dead-letter queue"
}

resource "yandex_resourcemanager_folder_iam_member" "queues" {
  folder_id = var.folder_id
  role      = "ymq.admin" # Message Queue has no per-queue roles
  member    = "serviceAccount:${yandex_iam_service_account.queues.id}"
}

resource "yandex_iam_service_account_static_access_key" "queues" {
  service_account_id = yandex_iam_service_account.queues.id
  description        = "npf-loyalty: Message Queue management"
}

resource "yandex_message_queue" "dead_letters" {
  name                       = "${var.name}-dead-letters"
  message_retention_seconds  = 1209600 # 14 days
  visibility_timeout_seconds = 600
  access_key                 = yandex_iam_service_account_static_access_key.queues.access_key
  secret_key                 = yandex_iam_service_account_static_access_key.queues.secret_key
  depends_on                 = [yandex_resourcemanager_folder_iam_member.queues]
}

# --- functions ---------------------------------------------------------------------------------
resource "yandex_function" "fn" {
  for_each           = local.functions
  name               = "${var.name}-${each.key}"
  description        = "npf-loyalty ${each.key}"
  runtime            = "python312"
  entrypoint         = each.value.entrypoint
  memory             = each.value.memory
  execution_timeout  = tostring(each.value.timeout)
  service_account_id = yandex_iam_service_account.fn[each.key].id
  user_hash          = filesha256("${var.dist_dir}/${each.key}.zip")

  # handler + npf_loyalty + requirements.txt; Yandex installs the pinned requirements itself
  content {
    zip_filename = "${var.dist_dir}/${each.key}.zip"
  }

  environment = merge(
    {
      NPF_STORE               = "s3://${var.bucket_name}"
      NPF_WORK_DIR            = local.work_dir
      NPF_LOG_LEVEL           = "INFO"
      NPF_DUCKDB_MEMORY_LIMIT = each.value.duckdb_mem
      AWS_ENDPOINT_URL        = "https://storage.yandexcloud.net"
      AWS_DEFAULT_REGION      = "ru-central1"
      MPLCONFIGDIR            = "/tmp/matplotlib"
    },
    each.key == "bot" ? { NPF_MANAGERS = var.manager_ids, NPF_ADMINS = var.admin_ids } : {},
    each.key == "report" && var.reports_chat_id != "" ? { NPF_REPORTS_CHAT_ID = var.reports_chat_id } : {},
  )

  secrets {
    id                   = yandex_lockbox_secret.s3[each.key].id
    version_id           = yandex_lockbox_secret_version.s3[each.key].id
    key                  = "access_key_id"
    environment_variable = "AWS_ACCESS_KEY_ID"
  }
  secrets {
    id                   = yandex_lockbox_secret.s3[each.key].id
    version_id           = yandex_lockbox_secret_version.s3[each.key].id
    key                  = "secret_access_key"
    environment_variable = "AWS_SECRET_ACCESS_KEY"
  }

  dynamic "secrets" {
    for_each = contains(["bot", "report"], each.key) ? ["bot_token"] : []
    content {
      id                   = var.bot_secret_id
      version_id           = var.bot_secret_version_id
      key                  = "bot_token"
      environment_variable = "NPF_BOT_TOKEN"
    }
  }
  dynamic "secrets" {
    for_each = each.key == "bot" ? ["webhook_secret"] : []
    content {
      id                   = var.bot_secret_id
      version_id           = var.bot_secret_version_id
      key                  = "webhook_secret"
      environment_variable = "NPF_WEBHOOK_SECRET"
    }
  }

  # scratch space for DuckDB's spill and downloaded parquet (NPF_WORK_DIR)
  mounts {
    name = "work"
    mode = "rw"
    ephemeral_disk {
      size_gb = each.value.disk_gb
    }
  }

  log_options {
    log_group_id = yandex_logging_group.functions.id
    min_level    = "INFO"
  }

  depends_on = [
    yandex_lockbox_secret_iam_binding.s3,
    yandex_lockbox_secret_iam_binding.bot,
  ]
}

# One ingest instance per zone at a time: feature rebuilds should not race (template.yaml
# explains why; on AWS it is ReservedConcurrentExecutions: 1). Yandex limits per zone, so up
# to three can still run at once in theory; the pointer-last publication keeps every result
# consistent, and a later upload rebuilds from all accepted dumps.
resource "yandex_function_scaling_policy" "ingest" {
  function_id = yandex_function.fn["ingest"].id
  policy {
    tag                  = "$latest"
    zone_instances_limit = 1
    zone_requests_limit  = 1
  }
}

resource "yandex_function_iam_binding" "invoker" {
  for_each    = local.functions
  function_id = yandex_function.fn[each.key].id
  role        = "functions.functionInvoker"
  members     = ["serviceAccount:${yandex_iam_service_account.invoker.id}"]
}

resource "yandex_resourcemanager_folder_iam_member" "invoker_writes_dead_letters" {
  folder_id = var.folder_id
  role      = "ymq.writer" # per folder: Message Queue has no per-queue roles
  member    = "serviceAccount:${yandex_iam_service_account.invoker.id}"
}

# --- triggers ----------------------------------------------------------------------------------
resource "yandex_function_trigger" "upload" {
  name        = "${var.name}-upload"
  description = "a dump under uploads/ -> ingest"
  object_storage {
    bucket_id    = yandex_storage_bucket.data.id
    prefix       = "uploads/"
    create       = true
    update       = false
    delete       = false
    batch_cutoff = 1
    batch_size   = 1
  }
  function {
    id                 = yandex_function.fn["ingest"].id
    service_account_id = yandex_iam_service_account.invoker.id
    retry_attempts     = 2
    retry_interval     = 60
  }
  dlq {
    queue_id           = yandex_message_queue.dead_letters.arn
    service_account_id = yandex_iam_service_account.invoker.id
  }
}

resource "yandex_function_trigger" "features_published" {
  name        = "${var.name}-features-published"
  description = "features/_current.json written last by ingest -> score"
  object_storage {
    bucket_id    = yandex_storage_bucket.data.id
    prefix       = "features/_current"
    suffix       = ".json"
    create       = true
    update       = true # the pointer is rewritten in place on every new feature version
    delete       = false
    batch_cutoff = 1
    batch_size   = 1
  }
  function {
    id                 = yandex_function.fn["score"].id
    service_account_id = yandex_iam_service_account.invoker.id
    retry_attempts     = 2
    retry_interval     = 60
  }
  dlq {
    queue_id           = yandex_message_queue.dead_letters.arn
    service_account_id = yandex_iam_service_account.invoker.id
  }
}

resource "yandex_function_trigger" "quarterly_report" {
  name        = "${var.name}-quarterly-report"
  description = "05:00 UTC (08:00 Moscow) on the first day of each quarter -> report"
  timer {
    # min hour day-of-month month day-of-week year, as in template.yaml
    cron_expression = "0 5 1 1,4,7,10 ? *"
  }
  function {
    id                 = yandex_function.fn["report"].id
    service_account_id = yandex_iam_service_account.invoker.id
    retry_attempts     = 2
    retry_interval     = 300
  }
  dlq {
    queue_id           = yandex_message_queue.dead_letters.arn
    service_account_id = yandex_iam_service_account.invoker.id
  }
}

# --- the bot's webhook -------------------------------------------------------------------------
# Public like the Lambda Function URL: Telegram cannot sign requests. Only POST on one path
# reaches the function, which refuses any request without the secret-token header.
resource "yandex_api_gateway" "bot" {
  name        = "${var.name}-bot"
  description = "Telegram webhook of the managers' bot"
  spec        = <<-EOT
    openapi: 3.0.0
    info:
      title: npf-loyalty-bot
      version: 1.0.0
    paths:
      /telegram/webhook:
        post:
          operationId: telegramWebhook
          x-yc-apigateway-integration:
            type: cloud_functions
            function_id: ${yandex_function.fn["bot"].id}
            service_account_id: ${yandex_iam_service_account.invoker.id}
            payload_format_version: "1.0"
  EOT
}

# --- outputs ---------------------------------------------------------------------------------
output "bucket" {
  value = yandex_storage_bucket.data.bucket
}

output "webhook_url" {
  description = "Give this to Telegram's setWebhook together with the secret_token"
  value       = "https://${yandex_api_gateway.bot.domain}/telegram/webhook"
}

output "uploader_service_account_id" {
  description = "Make its static key with: yc iam access-key create --service-account-id <id>"
  value       = yandex_iam_service_account.uploader.id
}

output "dead_letter_queue" {
  value = yandex_message_queue.dead_letters.id
}
