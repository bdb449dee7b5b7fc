# The R sub-kernel of a session (worker/kernels/r.py starts it): a read-eval-print loop that
# behaves like the R console. Each call's expressions are evaluated in the global environment
# one by one, visible values autoprinted (print, or show for S4); an error stops the call and
# is an error event; plots drawn during a call are PNG files sent back as image/png displays.
# Reads "<byte length> <language>\n<code>" on the commands pipe; writes JSON lines on the
# events pipe; printed output goes to fds 1 and 2 (unbuffered: r.py starts R under stdbuf).
local({
  fds <- as.integer(strsplit(Sys.getenv("TCI_KERNEL_FDS"), ",")[[1]])
  Sys.unsetenv("TCI_KERNEL_FDS")
  commands <- file(sprintf("/proc/self/fd/%d", fds[1]), "rb", raw = TRUE)
  events <- file(sprintf("/proc/self/fd/%d", fds[2]), "wb", raw = TRUE)
  plots <- file.path(tempdir(), "tci-plots")
  dir.create(plots, showWarnings = FALSE)

  json_string <- function(text) {
    text <- enc2utf8(paste(text, collapse = "\n"))
    text <- gsub("\\", "\\\\", text, fixed = TRUE)
    text <- gsub("\"", "\\\"", text, fixed = TRUE)
    text <- gsub("\n", "\\n", text, fixed = TRUE)
    text <- gsub("\r", "\\r", text, fixed = TRUE)
    text <- gsub("\t", "\\t", text, fixed = TRUE)
    text <- gsub("[[:cntrl:]]", "", text)
    paste0("\"", text, "\"")
  }
  send <- function(...) {
    fields <- list(...)
    parts <- vapply(names(fields), function(name) {
      value <- fields[[name]]
      shown <- if (is.character(value)) json_string(value)
               else if (is.logical(value)) tolower(as.character(value))
               else as.character(value)
      paste0("\"", name, "\":", shown)
    }, "")
    writeBin(charToRaw(paste0("{", paste(parts, collapse = ","), "}\n")), events)
    flush(events)
  }
  # Before each top-level expression: wait until the host has read what the earlier ones
  # printed to stdout and stderr, so the two arrive in the order they were written.
  sync <- function() {
    send(type = "sync")
    readLines(commands, n = 1L, warn = FALSE)
  }
  describe <- function(condition) {
    call <- conditionCall(condition)
    message <- conditionMessage(condition)
    # stop() at the top level of a call: the console's "Error: ...", not this loop's eval.
    if (identical(call, quote(eval(expression, envir = globalenv())))) call <- NULL
    if (is.null(call)) paste0("Error: ", message)
    else paste0("Error in ", paste(deparse(call, nlines = 1), collapse = ""), " : ", message)
  }

  run <- function(code) {
    parsed <- tryCatch(parse(text = code, keep.source = FALSE), error = identity)
    if (inherits(parsed, "error")) {
      send(type = "error", data = paste0("Error: ", conditionMessage(parsed)), ename = "ParseError")
      return(FALSE)
    }
    ok <- TRUE
    for (expression in parsed) {
      sync()
      ok <- tryCatch(withCallingHandlers({
        shown <- withVisible(eval(expression, envir = globalenv()))
        if (shown$visible) {
          if (isS4(shown$value)) methods::show(shown$value) else print(shown$value)
        }
        TRUE
      }, warning = function(w) {
        cat("Warning message:\n", conditionMessage(w), "\n", sep = "", file = stderr())
        invokeRestart("muffleWarning")
      }), error = function(e) {
        send(type = "error", data = describe(e), ename = class(e)[1])
        FALSE
      }, interrupt = function(i) {
        send(type = "error", data = "Interrupted (KeyboardInterrupt)", ename = "KeyboardInterrupt")
        FALSE
      })
      if (!ok) break
    }
    ok
  }

  send(type = "ready")
  call <- 0L
  repeat {
    header <- readLines(commands, n = 1L, warn = FALSE)
    if (length(header) == 0L) break
    size <- as.integer(strsplit(header, " ")[[1]][1])
    code <- if (size > 0L) rawToChar(readBin(commands, "raw", n = size)) else ""
    Encoding(code) <- "UTF-8"
    call <- call + 1L
    # A PNG device per call, as matplotlib's figures per cell, opened by R itself at the
    # call's first plot (the default device): a call that draws nothing pays nothing.
    pattern <- file.path(plots, sprintf("call%05d-%%03d.png", call))
    opened <- integer(0)
    options(device = function(...) {
      grDevices::png(filename = pattern, width = 640, height = 480, type = "cairo")
      opened <<- c(opened, grDevices::dev.cur())
    })
    ok <- tryCatch(run(code), interrupt = function(i) FALSE)
    flush(stdout())
    for (device in intersect(opened, grDevices::dev.list())) grDevices::dev.off(device)
    for (png in sort(Sys.glob(file.path(plots, sprintf("call%05d-*.png", call))))) {
      send(type = "display_file", path = png, mime = "image/png")
    }
    send(type = "done", ok = ok)
  }
})
