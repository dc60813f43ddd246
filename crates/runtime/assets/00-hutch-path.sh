# Installed by Hutch (read-only). Keeps the PATH a login shell was started with.
#
# Login shells (`bash -l -c ...`, `sh -l`) read /etc/profile, and Debian's
# /etc/profile assigns PATH a fixed value, dropping the PATH the sandbox gave
# the process. /etc/profile sources /etc/profile.d/*.sh after that
# assignment, so this file puts back the PATH found in the environment the
# shell was executed with (/proc/$$/environ, which shell assignments do not
# change). Files sourced after this one may still extend PATH.
#
# POSIX sh (dash and busybox sh source it too); under bash it forks nothing.
# It does nothing if /proc/$$/environ is unreadable or holds no (or an
# empty) PATH, and it leaves no variables behind.

if [ -r "/proc/$$/environ" ]; then
    __hutch_path=
    if [ -n "${BASH_VERSION-}" ]; then
        while IFS= read -r -d '' __hutch_kv; do
            case $__hutch_kv in
                PATH=*)
                    __hutch_path=${__hutch_kv#PATH=}
                    break
                    ;;
            esac
        done < "/proc/$$/environ"
    else
        # The subshell's own PATH finds tr and sed wherever the image has them.
        __hutch_path=$(
            PATH=/usr/local/bin:/usr/bin:/bin:$PATH
            tr '\000' '\n' < "/proc/$$/environ" 2>/dev/null | sed -n 's/^PATH=//p' 2>/dev/null
        )
        # Keep the first PATH if the environment repeats it.
        __hutch_path=${__hutch_path%%
*}
    fi
    if [ -n "$__hutch_path" ]; then
        PATH=$__hutch_path
        export PATH
    fi
    unset __hutch_kv __hutch_path
fi
