
using namespace System.Management.Automation
using namespace System.Management.Automation.Language

Register-ArgumentCompleter -Native -CommandName 'opendify' -ScriptBlock {
    param($wordToComplete, $commandAst, $cursorPosition)

    $commandElements = $commandAst.CommandElements
    $command = @(
        'opendify'
        for ($i = 1; $i -lt $commandElements.Count; $i++) {
            $element = $commandElements[$i]
            if ($element -isnot [StringConstantExpressionAst] -or
                $element.StringConstantType -ne [StringConstantType]::BareWord -or
                $element.Value.StartsWith('-') -or
                $element.Value -eq $wordToComplete) {
                break
        }
        $element.Value
    }) -join ';'

    $completions = @(switch ($command) {
        'opendify' {
            [CompletionResult]::new('--env-file', '--env-file', [CompletionResultType]::ParameterName, 'Read settings from this file instead of ./.env')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('serve', 'serve', [CompletionResultType]::ParameterValue, 'Run the OpenAI-compatible server')
            [CompletionResult]::new('doctor', 'doctor', [CompletionResultType]::ParameterValue, 'Diagnose the setup: configuration, port, Dify connectivity, app keys, streaming, conversations')
            [CompletionResult]::new('completions', 'completions', [CompletionResultType]::ParameterValue, 'Print a shell completion script')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'opendify;serve' {
            [CompletionResult]::new('--host', '--host', [CompletionResultType]::ParameterName, 'Address to listen on [env: SERVER_HOST] [default: 127.0.0.1]')
            [CompletionResult]::new('--port', '--port', [CompletionResultType]::ParameterName, 'Port to listen on [env: SERVER_PORT] [default: 5000]')
            [CompletionResult]::new('--log-level', '--log-level', [CompletionResultType]::ParameterName, 'Log level: error, warn, info, debug, trace [env: LOG_LEVEL]')
            [CompletionResult]::new('--env-file', '--env-file', [CompletionResultType]::ParameterName, 'Read settings from this file instead of ./.env')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'opendify;doctor' {
            [CompletionResult]::new('--timeout', '--timeout', [CompletionResultType]::ParameterName, 'Longest wait, in seconds, for each network step [default: 10]')
            [CompletionResult]::new('--only', '--only', [CompletionResultType]::ParameterName, 'Run only these checks (comma-separated)')
            [CompletionResult]::new('--network-errors', '--network-errors', [CompletionResultType]::ParameterName, 'Report network failures as failures or, for flaky CI, as warnings')
            [CompletionResult]::new('--env-file', '--env-file', [CompletionResultType]::ParameterName, 'Read settings from this file instead of ./.env')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print one JSON document with a stable schema instead of text')
            [CompletionResult]::new('--list', '--list', [CompletionResultType]::ParameterName, 'Name the checks and exit')
            [CompletionResult]::new('--strict', '--strict', [CompletionResultType]::ParameterName, 'Count warnings as failures (exit code 1)')
            [CompletionResult]::new('--no-color', '--no-color', [CompletionResultType]::ParameterName, 'Never colour the output (NO_COLOR is honoured too)')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Show every check''s details, not only its problems')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Show every check''s details, not only its problems')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('check-config', 'check-config', [CompletionResultType]::ParameterValue, 'Which .env was loaded, every setting with its source, every problem with its fix')
            [CompletionResult]::new('check-port', 'check-port', [CompletionResultType]::ParameterValue, 'Whether SERVER_HOST:SERVER_PORT can be bound, and which process holds it if not')
            [CompletionResult]::new('inspect-mappings', 'inspect-mappings', [CompletionResultType]::ParameterValue, 'The conversation store and the chat-to-conversation mappings in it')
            [CompletionResult]::new('ping-dify', 'ping-dify', [CompletionResultType]::ParameterValue, 'DNS, TCP, TLS and HTTP to DIFY_API_BASE, layer by layer')
            [CompletionResult]::new('test-key', 'test-key', [CompletionResultType]::ParameterValue, 'Each model''s app key against Dify''s /info and /parameters')
            [CompletionResult]::new('test-stream', 'test-stream', [CompletionResultType]::ParameterValue, 'One streaming request, timed, to Dify or through a running opendify')
            [CompletionResult]::new('report', 'report', [CompletionResultType]::ParameterValue, 'A Markdown bundle for an issue: OS, version, redacted config, every check, log tail')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'opendify;doctor;check-config' {
            [CompletionResult]::new('--timeout', '--timeout', [CompletionResultType]::ParameterName, 'Longest wait, in seconds, for each network step [default: 10]')
            [CompletionResult]::new('--network-errors', '--network-errors', [CompletionResultType]::ParameterName, 'Report network failures as failures or, for flaky CI, as warnings')
            [CompletionResult]::new('--env-file', '--env-file', [CompletionResultType]::ParameterName, 'Read settings from this file instead of ./.env')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print one JSON document with a stable schema instead of text')
            [CompletionResult]::new('--strict', '--strict', [CompletionResultType]::ParameterName, 'Count warnings as failures (exit code 1)')
            [CompletionResult]::new('--no-color', '--no-color', [CompletionResultType]::ParameterName, 'Never colour the output (NO_COLOR is honoured too)')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Show every check''s details, not only its problems')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Show every check''s details, not only its problems')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'opendify;doctor;check-port' {
            [CompletionResult]::new('--port', '--port', [CompletionResultType]::ParameterName, 'Port to check instead of SERVER_PORT')
            [CompletionResult]::new('--host', '--host', [CompletionResultType]::ParameterName, 'Address to check instead of SERVER_HOST')
            [CompletionResult]::new('--timeout', '--timeout', [CompletionResultType]::ParameterName, 'Longest wait, in seconds, for each network step [default: 10]')
            [CompletionResult]::new('--network-errors', '--network-errors', [CompletionResultType]::ParameterName, 'Report network failures as failures or, for flaky CI, as warnings')
            [CompletionResult]::new('--env-file', '--env-file', [CompletionResultType]::ParameterName, 'Read settings from this file instead of ./.env')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print one JSON document with a stable schema instead of text')
            [CompletionResult]::new('--strict', '--strict', [CompletionResultType]::ParameterName, 'Count warnings as failures (exit code 1)')
            [CompletionResult]::new('--no-color', '--no-color', [CompletionResultType]::ParameterName, 'Never colour the output (NO_COLOR is honoured too)')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Show every check''s details, not only its problems')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Show every check''s details, not only its problems')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'opendify;doctor;inspect-mappings' {
            [CompletionResult]::new('--user', '--user', [CompletionResultType]::ParameterName, 'Only the mappings of this user')
            [CompletionResult]::new('--chat', '--chat', [CompletionResultType]::ParameterName, 'Only the mapping of this chat id')
            [CompletionResult]::new('--limit', '--limit', [CompletionResultType]::ParameterName, 'Show at most this many mappings')
            [CompletionResult]::new('--timeout', '--timeout', [CompletionResultType]::ParameterName, 'Longest wait, in seconds, for each network step [default: 10]')
            [CompletionResult]::new('--network-errors', '--network-errors', [CompletionResultType]::ParameterName, 'Report network failures as failures or, for flaky CI, as warnings')
            [CompletionResult]::new('--env-file', '--env-file', [CompletionResultType]::ParameterName, 'Read settings from this file instead of ./.env')
            [CompletionResult]::new('--prune', '--prune', [CompletionResultType]::ParameterName, 'Remove expired mappings (the only option that changes anything)')
            [CompletionResult]::new('--verify', '--verify', [CompletionResultType]::ParameterName, 'Ask Dify whether each listed conversation still exists')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print one JSON document with a stable schema instead of text')
            [CompletionResult]::new('--strict', '--strict', [CompletionResultType]::ParameterName, 'Count warnings as failures (exit code 1)')
            [CompletionResult]::new('--no-color', '--no-color', [CompletionResultType]::ParameterName, 'Never colour the output (NO_COLOR is honoured too)')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Show every check''s details, not only its problems')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Show every check''s details, not only its problems')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'opendify;doctor;ping-dify' {
            [CompletionResult]::new('--dns', '--dns', [CompletionResultType]::ParameterName, 'Also resolve with this DNS server (IP or IP:PORT) and compare')
            [CompletionResult]::new('-c', '-c', [CompletionResultType]::ParameterName, 'Repeat the TCP and HTTP steps N times and show min/avg/max and loss')
            [CompletionResult]::new('--count', '--count', [CompletionResultType]::ParameterName, 'Repeat the TCP and HTTP steps N times and show min/avg/max and loss')
            [CompletionResult]::new('--timeout', '--timeout', [CompletionResultType]::ParameterName, 'Longest wait, in seconds, for each network step [default: 10]')
            [CompletionResult]::new('--network-errors', '--network-errors', [CompletionResultType]::ParameterName, 'Report network failures as failures or, for flaky CI, as warnings')
            [CompletionResult]::new('--env-file', '--env-file', [CompletionResultType]::ParameterName, 'Read settings from this file instead of ./.env')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print one JSON document with a stable schema instead of text')
            [CompletionResult]::new('--strict', '--strict', [CompletionResultType]::ParameterName, 'Count warnings as failures (exit code 1)')
            [CompletionResult]::new('--no-color', '--no-color', [CompletionResultType]::ParameterName, 'Never colour the output (NO_COLOR is honoured too)')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Show every check''s details, not only its problems')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Show every check''s details, not only its problems')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'opendify;doctor;test-key' {
            [CompletionResult]::new('--timeout', '--timeout', [CompletionResultType]::ParameterName, 'Longest wait, in seconds, for each network step [default: 10]')
            [CompletionResult]::new('--network-errors', '--network-errors', [CompletionResultType]::ParameterName, 'Report network failures as failures or, for flaky CI, as warnings')
            [CompletionResult]::new('--env-file', '--env-file', [CompletionResultType]::ParameterName, 'Read settings from this file instead of ./.env')
            [CompletionResult]::new('--live', '--live', [CompletionResultType]::ParameterName, 'Also send one tiny message per model (as user opendify-doctor; it costs tokens)')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print one JSON document with a stable schema instead of text')
            [CompletionResult]::new('--strict', '--strict', [CompletionResultType]::ParameterName, 'Count warnings as failures (exit code 1)')
            [CompletionResult]::new('--no-color', '--no-color', [CompletionResultType]::ParameterName, 'Never colour the output (NO_COLOR is honoured too)')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Show every check''s details, not only its problems')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Show every check''s details, not only its problems')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'opendify;doctor;test-stream' {
            [CompletionResult]::new('--via', '--via', [CompletionResultType]::ParameterName, 'Go through a running opendify at this URL (e.g. http://127.0.0.1:5000) instead of to Dify')
            [CompletionResult]::new('--message', '--message', [CompletionResultType]::ParameterName, 'The message to send')
            [CompletionResult]::new('--user', '--user', [CompletionResultType]::ParameterName, 'The user to send as (X-OpenWebUI-User-Id with --via, Dify''s `user` without)')
            [CompletionResult]::new('--api', '--api', [CompletionResultType]::ParameterName, 'The client API to test through opendify; other than chat it goes through the opendify at --via, or at SERVER_HOST:SERVER_PORT without it')
            [CompletionResult]::new('--timeout', '--timeout', [CompletionResultType]::ParameterName, 'Longest wait, in seconds, for each network step [default: 10]')
            [CompletionResult]::new('--network-errors', '--network-errors', [CompletionResultType]::ParameterName, 'Report network failures as failures or, for flaky CI, as warnings')
            [CompletionResult]::new('--env-file', '--env-file', [CompletionResultType]::ParameterName, 'Read settings from this file instead of ./.env')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print one JSON document with a stable schema instead of text')
            [CompletionResult]::new('--strict', '--strict', [CompletionResultType]::ParameterName, 'Count warnings as failures (exit code 1)')
            [CompletionResult]::new('--no-color', '--no-color', [CompletionResultType]::ParameterName, 'Never colour the output (NO_COLOR is honoured too)')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Show every check''s details, not only its problems')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Show every check''s details, not only its problems')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'opendify;doctor;report' {
            [CompletionResult]::new('-o', '-o', [CompletionResultType]::ParameterName, 'Write the report to this file instead of stdout')
            [CompletionResult]::new('--output', '--output', [CompletionResultType]::ParameterName, 'Write the report to this file instead of stdout')
            [CompletionResult]::new('--log-lines', '--log-lines', [CompletionResultType]::ParameterName, 'How many lines of the log file to include')
            [CompletionResult]::new('--timeout', '--timeout', [CompletionResultType]::ParameterName, 'Longest wait, in seconds, for each network step [default: 10]')
            [CompletionResult]::new('--network-errors', '--network-errors', [CompletionResultType]::ParameterName, 'Report network failures as failures or, for flaky CI, as warnings')
            [CompletionResult]::new('--env-file', '--env-file', [CompletionResultType]::ParameterName, 'Read settings from this file instead of ./.env')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print one JSON document with a stable schema instead of text')
            [CompletionResult]::new('--strict', '--strict', [CompletionResultType]::ParameterName, 'Count warnings as failures (exit code 1)')
            [CompletionResult]::new('--no-color', '--no-color', [CompletionResultType]::ParameterName, 'Never colour the output (NO_COLOR is honoured too)')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Show every check''s details, not only its problems')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Show every check''s details, not only its problems')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'opendify;doctor;help' {
            [CompletionResult]::new('check-config', 'check-config', [CompletionResultType]::ParameterValue, 'Which .env was loaded, every setting with its source, every problem with its fix')
            [CompletionResult]::new('check-port', 'check-port', [CompletionResultType]::ParameterValue, 'Whether SERVER_HOST:SERVER_PORT can be bound, and which process holds it if not')
            [CompletionResult]::new('inspect-mappings', 'inspect-mappings', [CompletionResultType]::ParameterValue, 'The conversation store and the chat-to-conversation mappings in it')
            [CompletionResult]::new('ping-dify', 'ping-dify', [CompletionResultType]::ParameterValue, 'DNS, TCP, TLS and HTTP to DIFY_API_BASE, layer by layer')
            [CompletionResult]::new('test-key', 'test-key', [CompletionResultType]::ParameterValue, 'Each model''s app key against Dify''s /info and /parameters')
            [CompletionResult]::new('test-stream', 'test-stream', [CompletionResultType]::ParameterValue, 'One streaming request, timed, to Dify or through a running opendify')
            [CompletionResult]::new('report', 'report', [CompletionResultType]::ParameterValue, 'A Markdown bundle for an issue: OS, version, redacted config, every check, log tail')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'opendify;doctor;help;check-config' {
            break
        }
        'opendify;doctor;help;check-port' {
            break
        }
        'opendify;doctor;help;inspect-mappings' {
            break
        }
        'opendify;doctor;help;ping-dify' {
            break
        }
        'opendify;doctor;help;test-key' {
            break
        }
        'opendify;doctor;help;test-stream' {
            break
        }
        'opendify;doctor;help;report' {
            break
        }
        'opendify;doctor;help;help' {
            break
        }
        'opendify;completions' {
            [CompletionResult]::new('--env-file', '--env-file', [CompletionResultType]::ParameterName, 'Read settings from this file instead of ./.env')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'opendify;help' {
            [CompletionResult]::new('serve', 'serve', [CompletionResultType]::ParameterValue, 'Run the OpenAI-compatible server')
            [CompletionResult]::new('doctor', 'doctor', [CompletionResultType]::ParameterValue, 'Diagnose the setup: configuration, port, Dify connectivity, app keys, streaming, conversations')
            [CompletionResult]::new('completions', 'completions', [CompletionResultType]::ParameterValue, 'Print a shell completion script')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'opendify;help;serve' {
            break
        }
        'opendify;help;doctor' {
            [CompletionResult]::new('check-config', 'check-config', [CompletionResultType]::ParameterValue, 'Which .env was loaded, every setting with its source, every problem with its fix')
            [CompletionResult]::new('check-port', 'check-port', [CompletionResultType]::ParameterValue, 'Whether SERVER_HOST:SERVER_PORT can be bound, and which process holds it if not')
            [CompletionResult]::new('inspect-mappings', 'inspect-mappings', [CompletionResultType]::ParameterValue, 'The conversation store and the chat-to-conversation mappings in it')
            [CompletionResult]::new('ping-dify', 'ping-dify', [CompletionResultType]::ParameterValue, 'DNS, TCP, TLS and HTTP to DIFY_API_BASE, layer by layer')
            [CompletionResult]::new('test-key', 'test-key', [CompletionResultType]::ParameterValue, 'Each model''s app key against Dify''s /info and /parameters')
            [CompletionResult]::new('test-stream', 'test-stream', [CompletionResultType]::ParameterValue, 'One streaming request, timed, to Dify or through a running opendify')
            [CompletionResult]::new('report', 'report', [CompletionResultType]::ParameterValue, 'A Markdown bundle for an issue: OS, version, redacted config, every check, log tail')
            break
        }
        'opendify;help;doctor;check-config' {
            break
        }
        'opendify;help;doctor;check-port' {
            break
        }
        'opendify;help;doctor;inspect-mappings' {
            break
        }
        'opendify;help;doctor;ping-dify' {
            break
        }
        'opendify;help;doctor;test-key' {
            break
        }
        'opendify;help;doctor;test-stream' {
            break
        }
        'opendify;help;doctor;report' {
            break
        }
        'opendify;help;completions' {
            break
        }
        'opendify;help;help' {
            break
        }
    })

    $completions.Where{ $_.CompletionText -like "$wordToComplete*" } |
        Sort-Object -Property ListItemText
}
