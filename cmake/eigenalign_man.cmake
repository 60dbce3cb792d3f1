# Writes the man page eigenalign.1 from the tool's own help texts (cmake -P, at build time):
# `eigenalign --help` gives the command list, `eigenalign CMD --help` each command's section, so
# the page covers every command and never drifts from the tool. Inputs: CLI, OUT, VERSION.
set(ENV{EA_NO_REEXEC} 1)
execute_process(COMMAND ${CLI} --help OUTPUT_VARIABLE top RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${CLI} --help failed (${rc})")
endif()

# troff-safe text: backslashes escaped, lines starting with . or ' protected.
function(ea_troff in outvar)
  string(REPLACE "\\" "\\e" t "${in}")
  string(REGEX REPLACE "(^|\n)([.'])" "\\1\\\\&\\2" t "${t}")
  set(${outvar} "${t}" PARENT_SCOPE)
endfunction()

string(REPLACE "\n" ";" lines "${top}")
set(commands "")
set(summaries "")
foreach(line IN LISTS lines)
  if(line MATCHES "^  ([a-z][a-z-]*) +(.*)$")
    list(APPEND commands "${CMAKE_MATCH_1}")
    ea_troff("${CMAKE_MATCH_2}" s)
    string(APPEND summaries ".TP\n.B ${CMAKE_MATCH_1}\n${s}\n")
  endif()
endforeach()
list(LENGTH commands n)
if(n EQUAL 0)
  message(FATAL_ERROR "no commands found in `${CLI} --help`")
endif()

string(TIMESTAMP year "%Y")
set(page ".TH EIGENALIGN 1 \"${year}\" \"eigenalign ${VERSION}\" \"User Commands\"\n")
string(APPEND page ".SH NAME\neigenalign \\- measure the low-rank structure of transformer activations and use it to shrink inference memory\n")
string(APPEND page ".SH SYNOPSIS\n.B eigenalign\n.I COMMAND\n[\\fIoptions\\fR]\n.br\n.B eigenalign\n.I COMMAND\n.B \\-\\-help\n")
string(APPEND page ".SH DESCRIPTION\nEvery command takes \\fB\\-\\-help\\fR and \\fB\\-\\-json\\fR; \\fB\\-\\-model\\fR defaults to the bundled gpt2-micro.\nResults go to standard output, progress to standard error.\n")
string(APPEND page ".SH COMMANDS\n${summaries}")
foreach(cmd IN LISTS commands)
  execute_process(COMMAND ${CLI} ${cmd} --help OUTPUT_VARIABLE help RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${CLI} ${cmd} --help failed (${rc})")
  endif()
  ea_troff("${help}" h)
  string(TOUPPER "${cmd}" up)
  string(APPEND page ".SH \"${up}\"\n.nf\n${h}.fi\n")
endforeach()
string(APPEND page ".SH ENVIRONMENT\n.TP\n.B OMP_NUM_THREADS\nthreads of the one OpenMP pool.\n"
  ".TP\n.B OPENBLAS_CORETYPE, OMP_WAIT_POLICY, GOMP_SPINCOUNT\nwhen unset, the tool re-executes itself once with OPENBLAS_CORETYPE=Haswell (if OpenBLAS fell back to SSE3 kernels on a CPU with AVX2 and FMA) and GOMP_SPINCOUNT=20000.\n"
  ".TP\n.B EA_NO_REEXEC=1\ndisables that re-execution.\n.TP\n.B EA_PROGRESS=1\nprogress bars on standard error even when it is not a terminal.\n"
  ".SH EXIT STATUS\n0 on success, 1 on failure (with a message naming the file and the problem), 2 on bad usage.\n"
  ".SH SEE ALSO\nThe library: \\fBeigenalign.h\\fR, \\fBpkg-config \\-\\-cflags \\-\\-libs eigenalign\\fR, \\fBfind_package(eigenalign)\\fR; the Python package \\fBeigenalign\\fR.\n")
file(WRITE "${OUT}.tmp" "${page}")
file(RENAME "${OUT}.tmp" "${OUT}")
